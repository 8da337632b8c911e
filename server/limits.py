"""Request limits checked before any work or allocation that grows with the request.

A 72 KB GetItems of 24,000 ids with vectors on a 65,536-d collection asks for a 6 GB response, and 200,000
empty image items into such a collection for a 48 GB array: both must be refused from their counts, before
anything is built. The numbers are documented in the proto and the README.
"""

from __future__ import annotations

from server.errors import Error, fail, quote

MAX_IDS = 10_000  # ids in one GetItems or Delete
MAX_SCROLL = 1_000  # items in one Scroll page
MAX_BATCH_SEARCHES = 1_024  # searches in one SearchBatch
MAX_ITEMS = 10_000  # items in one Upsert
MAX_WORDS = 256  # words in one text query
MAX_SENTENCE_CHARS = 2_000  # a sentence query (MiniLM reads its first 256 word pieces in any case)
MAX_VOCABULARY = 50_000  # words in one Tag vocabulary
MAX_WORD_CHARS = 100  # one word (of a query, a vocabulary or Embed/NearestWords)
# Working memory one Upsert may need for its vectors (items x dim x 4 bytes), whatever its wire size.
MAX_BATCH_BYTES = 256 * 1024 * 1024
# What a hit or item costs in a response besides its vector: id, score, payload framing.
_PER_ENTRY_BYTES = 64


def check_count(what: str, n: int, limit: int, fix: str) -> None:
    if n > limit:
        fail(Error.BAD_REQUEST, f"{what} has {n:,} entries, over the limit of {limit:,}: {fix}")


def check_word(word: str) -> None:
    if len(word) > MAX_WORD_CHARS:
        fail(
            Error.BAD_REQUEST,
            f"word {quote(word, 40)} is over {MAX_WORD_CHARS} characters: send words, not text",
        )


def check_batch_memory(items: int, dim: int) -> None:
    need = items * dim * 4
    if need > MAX_BATCH_BYTES:
        most = max(1, MAX_BATCH_BYTES // (dim * 4))
        fail(
            Error.BAD_REQUEST,
            f"{items:,} items of dimension {dim} need {need / 2**20:,.0f} MiB of vectors, over the "
            f"{MAX_BATCH_BYTES // 2**20} MiB one upsert may use: send at most {most:,} items per call",
        )


def check_response_size(entries: int, vector_bytes: int, payload_bytes: int, limit: int, fix: str) -> None:
    """Refuse a response that would not fit in ``limit`` bytes, before building it."""
    size = entries * (vector_bytes + _PER_ENTRY_BYTES) + payload_bytes
    if size > limit:
        fail(
            Error.TOO_LARGE,
            f"the response would be about {size / 2**20:,.1f} MiB, over this server's message limit of "
            f"{limit / 2**20:,.1f} MiB (VISIONSEARCH_MAX_MESSAGE_BYTES): {fix}",
        )
