"""WordNet 3.0 (Debian's ``wordnet-base``) and the ImageNet classes' places in it.

ImageNet's 1,000 classes are WordNet 3.0 noun synsets, sorted by their id (``n`` + the synset's byte offset in
``data.noun``), but torchvision only ships their display names. A class is mapped back to its synset by its
name: among the noun synsets that have the name as a lemma, the mapping keeps the longest chain whose offsets
strictly increase in class order; a class whose name matches no lemma, or no sense that fits the chain, takes
the one sense of the longest part of its name that lies between its neighbours' offsets.
``tests/test_wordnet.py`` checks known chains (tabby -> cat -> feline -> carnivore -> mammal).

nltk reads WordNet's database files, but its reader insists on a ``lexnames`` file that Debian leaves out;
``open_wordnet`` copies the Debian files into a cache folder and writes one there (the 45 lexicographer
file names of WordNet 3.0, in order).
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.errors import AssetMissing

WORDNET_DIR = Path("/usr/share/wordnet")
FIX = "run `make install` (scripts/setup.sh), or `apt-get install wordnet-base`"

# lexnames(5WN): number, name and syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb) of each file.
_LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
    "adj.ppl 3",
)  # fmt: skip
_FILES = (
    "data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc",
)  # fmt: skip

_lock = threading.Lock()
_readers: dict[Path, Any] = {}


def wordnet_dir() -> Path:
    if not (WORDNET_DIR / "data.noun").is_file():
        raise AssetMissing(f"WordNet 3.0 is not at {WORDNET_DIR}: {FIX}")
    return WORDNET_DIR


def open_wordnet(cache_dir: Path) -> Any:
    """nltk's reader over Debian's WordNet 3.0 files (one per cache folder, built on first use)."""
    source = wordnet_dir()
    root = cache_dir / "wordnet-3.0"
    with _lock:
        if root in _readers:
            return _readers[root]
        root.mkdir(parents=True, exist_ok=True)
        for name in _FILES:
            # Copies, not links: nltk refuses to open a file that resolves outside the reader's root.
            copy = root / name
            if not copy.is_file() or copy.stat().st_size != (source / name).stat().st_size:
                tmp = copy.with_name(f"{name}.{os.getpid()}.tmp")
                shutil.copyfile(source / name, tmp)
                os.replace(tmp, copy)
        lexnames = "".join(f"{n:02d}\t{line.replace(' ', chr(9))}\n" for n, line in enumerate(_LEXNAMES))
        path = root / "lexnames"
        if not path.is_file() or path.read_text() != lexnames:
            tmp = path.with_name(f"lexnames.{os.getpid()}.tmp")
            tmp.write_text(lexnames)
            os.replace(tmp, path)
        try:
            import nltk.data
            from nltk.corpus.reader.wordnet import WordNetCorpusReader
        except ImportError:
            raise AssetMissing(f"nltk is not installed: {FIX}") from None
        # nltk opens only files below its data paths (its guard against planted corpora).
        if str(root.resolve()) not in nltk.data.path:
            nltk.data.path.append(str(root.resolve()))

        class Reader(WordNetCorpusReader):
            def map_wn(self, version: str = "wordnet") -> None:
                # nltk maps other WordNet versions onto its own download for multilingual lookups; this
                # is WordNet 3.0 itself and only English is used, so there is nothing to map.
                return None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": English only
            reader = Reader(str(root), None)
        _readers[root] = reader
        return reader


def lemma_text(lemma: str) -> str:
    """A WordNet lemma as people write it: "big_cat" -> "big cat"."""
    return lemma.replace("_", " ")


@dataclass(frozen=True)
class ClassSynset:
    index: int  # ImageNet class index
    name: str  # torchvision's display name
    synset: str  # e.g. "tabby.n.01"
    offset: int
    how: str  # "lemma" (the name is a lemma of the synset) or "between" (chosen between its neighbours)


def _keys(text: str) -> list[str]:
    """Lemma spellings a class name may have: WordNet keeps hyphens ("shih-tzu") but not spaces."""
    spaced = re.sub(r"\s+", "_", text.strip().lower())
    return list(dict.fromkeys([spaced, spaced.replace("-", "_"), spaced.replace("-", "")]))


def _senses(wn: Any, text: str) -> dict[int, Any]:
    return {s.offset(): s for key in _keys(text) for s in wn.synsets(key, pos="n")}


def map_imagenet_classes(wn: Any, names: Sequence[str]) -> list[ClassSynset | None]:
    """Each ImageNet class (in class order) -> its WordNet noun synset, or None if none can be told."""
    candidates = [sorted(_senses(wn, name).values(), key=lambda s: s.offset()) for name in names]
    # Longest chain of strictly increasing offsets choosing at most one sense per class (patience sorting
    # over (class, sense) pairs, senses of one class taken in decreasing offset so that two never chain).
    tails: list[int] = []  # smallest last offset of a chain of each length
    tail_ref: list[tuple[int, int]] = []  # (class, sense index) ending that chain
    parent: dict[tuple[int, int], tuple[int, int] | None] = {}
    for ci, senses in enumerate(candidates):
        for si in reversed(range(len(senses))):
            off = senses[si].offset()
            pos = bisect.bisect_left(tails, off)
            parent[(ci, si)] = tail_ref[pos - 1] if pos else None
            if pos == len(tails):
                tails.append(off)
                tail_ref.append((ci, si))
            else:
                tails[pos] = off
                tail_ref[pos] = (ci, si)
    chosen: dict[int, Any] = {}
    ref: tuple[int, int] | None = tail_ref[-1] if tail_ref else None
    while ref is not None:
        chosen[ref[0]] = candidates[ref[0]][ref[1]]
        ref = parent[ref]
    out: list[ClassSynset | None] = [None] * len(names)
    for ci, s in chosen.items():
        out[ci] = ClassSynset(ci, names[ci], s.name(), s.offset(), "lemma")
    # Classes left over ("crane bird", "maillot tank suit": torchvision's names for twice-named classes):
    # the sense of the longest part of the name that lies between the neighbours' offsets.
    known = sorted(chosen)
    for ci in range(len(names)):
        if out[ci] is not None:
            continue
        k = bisect.bisect_left(known, ci)
        lo = chosen[known[k - 1]].offset() if k else -1
        hi = chosen[known[k]].offset() if k < len(known) else 1 << 40
        words = names[ci].split()
        parts = sorted(
            {" ".join(words[a:b]) for a in range(len(words)) for b in range(a + 1, len(words) + 1)},
            key=lambda p: -len(p.split()),
        )
        for part in parts:
            fits = [s for off, s in _senses(wn, part).items() if lo < off < hi]
            if len(fits) == 1:
                out[ci] = ClassSynset(ci, names[ci], fits[0].name(), fits[0].offset(), "between")
                break
            if fits:
                break  # ambiguous: leave the class unmapped rather than guess
    return out


def hypernym_chain(synset: Any, limit: int = 12) -> list[Any]:
    """The synset's ancestors nearest first (instance hypernyms count): tabby -> domestic cat -> cat -> feline
    -> carnivore -> placental -> mammal ... Where a synset has several parents, the chain follows the deepest
    one, the taxonomic parent: domestic cat is a cat (depth 13) and a domestic animal (depth 6)."""
    chain: list[Any] = []
    s = synset
    while len(chain) < limit:
        parents = s.hypernyms() or s.instance_hypernyms()
        if not parents:
            break
        s = max(parents, key=lambda p: (p.max_depth(), -p.offset()))
        chain.append(s)
    return chain
