"""The plan's pieces on disk (docs/llm.md 4.4): a measured piece is kept across processes and runs, so a sweep's
repeated points, and its workers, compile and simulate each piece once.

An entry is one JSON file named by the SHA-256 of everything that fixes the piece's numbers:

* the piece's key in `Pieces` (kind, tp, tokens, past, MLP groups; a collective's shape) and, for a part, the
  model's shape (`DecoderShape`, its name left out: two configurations of one shape share parts) and the
  precision; a collective depends on neither, so models and precisions share them;
* the chip configuration (the validated JSON) and the compile options the piece is built with;
* the code: every file of the lpusim package (Python sources, data, the compiled extension's bytes), so any
  change to the compiler, the simulator or the part builders misses every older entry.

The part graphs themselves are not hashed: they are built from the key with seeded random weights by code the
code hash covers, and building a 70B part only to hash it would cost as much as a cache hit saves.

An entry holds the `Piece` record (cycles, SRAM, install and sync cycles, link vectors), or for a part that does
not fit one chip the reason (finding that out costs a whole compile); not the compiled program: the record is all a
plan reads, a few hundred bytes against a program's megabytes. A decode attention program is needed once more
when a prefill chunk that was not stored claims its cache addresses; `Pieces` compiles it again then (not
simulated). Entries are written to a temporary file and renamed over the name, so a reader sees a whole entry or
none; an entry that cannot be read or does not match its key is measured again and rewritten. Nothing is evicted:
remove the directory to reclaim the space.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from lpusim.llm.pieces import PartDoesNotFit, Piece, Pieces

ENV = "LPUSIM_CACHE"
# Bumped when an entry's layout changes without a change to the code that the code hash covers.
FORMAT = 1


def default_dir() -> Path:
    """$LPUSIM_CACHE, else $XDG_CACHE_HOME/lpusim/pieces, else ~/.cache/lpusim/pieces."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lpusim" / "pieces"


@functools.lru_cache(maxsize=None)
def code_hash() -> str:
    """SHA-256 over the lpusim package's files (relative path and bytes, in path order), bytecode left out."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix not in (".pyc", ".pyo")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def key_material(pieces: Pieces, key: tuple) -> dict[str, Any]:
    """What determines the piece `key` of `pieces` (JSON-ready)."""
    material: dict[str, Any] = {"format": FORMAT, "code": code_hash(), "piece": list(key),
                                "chip": pieces.chip.config}
    if key[0] == "part":
        shape = dataclasses.asdict(pieces.shape)
        shape.pop("name")
        material.update(shape=shape, precision=pieces.precision,
                        # a timing-only run; an attention part with a past keeps its cache in place (cache regions)
                        options={"timing_only": True, "cache_regions": key[1] == "attention" and bool(key[4])})
    else:
        material["options"] = {"timing_only": True}
    return material


class PieceCache:
    """A directory of measured pieces; `Pieces.store` takes one. `hits` and `misses` count this object's look-ups."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_dir()
        self.hits = self.misses = 0
        self.unwritable = False

    def path(self, material: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.json"

    def load(self, pieces: Pieces, key: tuple) -> Piece | None:
        """The stored piece, or None (not stored, unreadable, or stored under other key material). Raises
        PartDoesNotFit for a part stored as not fitting one chip."""
        material = key_material(pieces, key)
        try:
            with open(self.path(material), encoding="utf-8") as f:
                entry = json.load(f)
            if entry["key"] != json.loads(json.dumps(material)):  # a hash collision, or a hand-edited entry
                raise ValueError("key mismatch")
            failure = entry.get("does_not_fit")
            # compile_s is what this run spent compiling: nothing, for a stored piece
            piece = Piece(**dict(entry["piece"], compile_s=0.0)) if failure is None else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.misses += 1
            return None
        self.hits += 1
        if piece is None:
            raise PartDoesNotFit(str(failure))
        return piece

    def save(self, pieces: Pieces, key: tuple, piece: Piece) -> None:
        self._write(key_material(pieces, key), {"piece": dataclasses.asdict(piece)})

    def save_failure(self, pieces: Pieces, key: tuple, message: str) -> None:
        """Store that the part `key` does not fit one chip (its PartDoesNotFit message)."""
        self._write(key_material(pieces, key), {"does_not_fit": message})

    def _write(self, material: dict[str, Any], body: dict[str, Any]) -> None:
        """An entry, atomically: a temporary file in the entry's directory, renamed over the entry's name. A
        cache that cannot be written (a read-only home, a full disk) costs speed, not the plan: one warning, then
        nothing more is stored."""
        if self.unwritable:
            return
        path = self.path(material)
        text = json.dumps(dict(body, key=material), sort_keys=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        except OSError as e:
            self.unwritable = True
            warnings.warn(f"lpusim: the pieces' cache {self.directory} cannot be written ({e.strerror}); "
                          f"plans will not be stored", stacklevel=2)
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
