"""What a load test runs: ``LoadConfig`` (frozen), the request kinds, and the errors that stop a run early."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# The request kinds a mix can name, in a fixed order (their index is what the runner records per request).
# upsert and delete write to the collection (one item per call, ids from a pool of WRITE_POOL "loadtest-N"
# ids): for soaks that exercise the write-ahead log and snapshots under a read load.
KINDS: tuple[str, ...] = ("search_vector", "search_image", "search_word", "tag", "embed", "upsert", "delete")
# Kinds that use a collection (and so need it to exist); the others only need the server.
COLLECTION_KINDS = frozenset({"search_vector", "search_image", "search_word", "upsert", "delete"})
VECTOR_KINDS = frozenset({"search_vector", "upsert"})
IMAGE_KINDS = frozenset({"search_image", "tag", "embed"})

Mode = Literal["closed", "open"]
Arrival = Literal["uniform", "poisson"]
Engine = Literal["python", "native"]


class LoadTestError(Exception):
    """A load test that cannot start; the CLI prints ``error: <message>`` and exits with code 2."""


class ConfigError(LoadTestError, ValueError):
    """Bad settings or inputs: unknown kind in the mix, unknown collection, no images found, ..."""


class UnreachableError(LoadTestError):
    """The server did not answer before the run (dead address, not serving)."""


@dataclass(frozen=True)
class LoadConfig:
    """One load test run.

    ``mode="closed"``: ``concurrency`` callers each send their next request as soon as the last one returns.
    ``mode="open"``: requests arrive at ``rate`` per second whatever the server does (``arrival`` "uniform":
    request i at i/rate; "poisson": exponential gaps drawn with ``seed``); latency is measured from each
    request's scheduled time, and at most ``max_in_flight`` are outstanding (when that cap binds, the lateness
    still counts in the latencies and in the generator lag).

    The run lasts ``warmup_s`` (requests sent, not recorded) then ``duration_s`` or ``max_requests`` recorded
    requests, whichever ends first. ``mix`` weights the request kinds (see ``KINDS``).

    ``engine="python"`` sends from this process (grpc.aio); ``engine="native"`` hands the prepared requests to
    ``visionsearch-loadgen``, the C++ generator built by ``make clients`` (see ``loadtest.native``). Both
    produce the same ``Report``.
    """

    address: str = "127.0.0.1:50051"
    mode: Mode = "closed"
    concurrency: int = 8
    rate: float = 100.0
    arrival: Arrival = "uniform"
    duration_s: float = 10.0
    max_requests: int | None = None
    warmup_s: float = 1.0
    mix: Mapping[str, float] = field(default_factory=lambda: {"search_vector": 1.0})
    collection: str = "default"
    k: int = 10
    with_payload: bool = True
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_in_flight: int = 1000
    # Query vectors: a .npy file of shape (n, dim); None takes up to 64 vectors from the collection itself.
    vectors: str | Path | None = None
    # Images for search_image, tag and embed: a folder searched recursively; None: Tux Paint stamp photos.
    images: str | Path | None = None
    # Words for search_word; None: a built-in list of common nouns.
    words: tuple[str, ...] | None = None
    seed: int = 0
    engine: Engine = "python"
    # A server on a network: its API key, and TLS (on with ``tls`` or when a CA file is given).
    api_key: str | None = None
    tls: bool = False
    root_certificates: str | Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ConfigError(f"mode must be 'closed' or 'open', not {self.mode!r}")
        if self.arrival not in ("uniform", "poisson"):
            raise ConfigError(f"arrival must be 'uniform' or 'poisson', not {self.arrival!r}")
        if self.engine not in ("python", "native"):
            raise ConfigError(f"engine must be 'python' or 'native', not {self.engine!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, not {self.concurrency}")
        if not self.rate > 0:
            raise ConfigError(f"rate must be > 0 requests/s, not {self.rate}")
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be > 0 s, not {self.duration_s}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be >= 1, not {self.max_requests}")
        if self.warmup_s < 0:
            raise ConfigError(f"warm-up must be >= 0 s, not {self.warmup_s}")
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, not {self.k}")
        if not self.timeout_s > 0 or not self.connect_timeout_s > 0:
            raise ConfigError("timeouts must be > 0 s")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, not {self.max_in_flight}")
        if self.words is not None and not self.words:
            raise ConfigError("words is empty")
        unknown = sorted(set(self.mix) - set(KINDS))
        if unknown:
            raise ConfigError(
                f"unknown request kind(s) in the mix: {', '.join(unknown)} (known: {', '.join(KINDS)})"
            )
        if any(not w >= 0 for w in self.mix.values()) or not sum(self.mix.values()) > 0:
            raise ConfigError(f"mix weights must be >= 0 with a positive sum, not {dict(self.mix)}")
        object.__setattr__(self, "mix", {k: float(w) for k, w in self.mix.items() if w > 0})

    @property
    def kinds(self) -> list[str]:
        """The kinds this run sends, in ``KINDS`` order."""
        return [k for k in KINDS if k in self.mix]


def parse_mix(text: str) -> dict[str, float]:
    """``"search_vector=8,tag=1,embed=1"`` → ``{"search_vector": 8.0, "tag": 1.0, "embed": 1.0}``; a bare kind
    weighs 1."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        try:
            mix[name] = mix.get(name, 0.0) + (float(weight) if weight.strip() else 1.0)
        except ValueError:
            raise ConfigError(f"bad weight in mix entry {part!r}: expected KIND=NUMBER") from None
    if not mix:
        raise ConfigError(f"empty mix {text!r}: expected e.g. search_vector=8,tag=1,embed=1")
    return mix
