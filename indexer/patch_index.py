"""A patch index on disk: `<stem>.faiss`, `<stem>.ids.npy` (the sorted patch ids it holds),
and the JSON sidecar `<stem>.json`.

Every file is written under a temporary name and renamed into place, the sidecar last; the
sidecar records each file's size, so a half-replaced set is detected on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from threads_search.atomic import atomic_path
from threads_search.errors import IndexFileError
from threads_search.indexer.patch_ids import ROW_BITS
from threads_search.indexer.patch_kinds import PatchKindSpec, get_patch_kind

PATCH_SIDECAR_VERSION = 1
REBUILD_HINT = "rebuild with `threads-search index ATLAS --level patches`"


@dataclass
class PatchIndex:
    """A faiss patch index, the sorted ids it holds (n,) int64 (memory-mapped once loaded),
    and its sidecar (factory, parameters, measured recall, memory)."""

    index: faiss.Index
    ids: np.ndarray
    sidecar: dict
    path: Path | None = None
    _ivf: faiss.Index | None = field(default=None, repr=False)
    _held: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def spec(self) -> PatchKindSpec:
        return get_patch_kind(self.sidecar["kind"])

    @property
    def dim(self) -> int:
        return int(self.sidecar["dimension"])

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def ivf(self) -> faiss.Index | None:
        """The IndexIVF inside (None for flat)."""
        if self._ivf is None:
            self._ivf = faiss.try_extract_index_ivf(self.index)
        return self._ivf

    def held_slides(self) -> tuple[np.ndarray, np.ndarray]:
        """(vids, patch counts): the sorted distinct slides with patches in the index (cached)."""
        if self._held is None:
            vids = np.asarray(self.ids) >> ROW_BITS
            starts = np.flatnonzero(np.concatenate([[True], vids[1:] != vids[:-1]])) if vids.size else vids
            self._held = vids[starts], np.diff(np.append(starts, vids.size))
        return self._held

    def ids_between(self, first: int, end: int) -> np.ndarray:
        """Held ids in [first, end), ascending (e.g. one slide's patches)."""
        lo, hi = np.searchsorted(self.ids, [first, end])
        return np.asarray(self.ids[lo:hi])


def patch_index_paths(stem: str | os.PathLike, companions: tuple[str, ...] = ()) -> dict[str, Path]:
    stem = Path(stem)
    suffixes = (".faiss", ".ids.npy", ".json") + tuple(companions)
    return {suffix: stem.with_name(stem.name + suffix) for suffix in suffixes}


def save_patch_index(built: PatchIndex, stem: str | os.PathLike, companions: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write the index, its ids and its sidecar atomically under `stem`; returns the paths.

    `companions` are suffixes of files the caller wrote beside it (e.g. a slide table): their sizes go
    into the sidecar too, so a set mixing two builds is refused on load.
    """
    paths = patch_index_paths(stem, companions)
    paths[".faiss"].parent.mkdir(parents=True, exist_ok=True)
    files = {}
    _replace(paths[".faiss"], lambda target: faiss.write_index(built.index, str(target)))
    _replace(paths[".ids.npy"], lambda target: np.save(target, np.asarray(built.ids, dtype=np.int64),
                                                       allow_pickle=False))
    for suffix in (".faiss", ".ids.npy") + tuple(companions):
        files[suffix] = paths[suffix].stat().st_size
    sidecar = dict(built.sidecar, count=built.count, file_bytes=files)
    _replace(paths[".json"], lambda target: target.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))
    built.sidecar, built.path = sidecar, Path(stem)
    return paths


def load_patch_index(stem: str | os.PathLike) -> PatchIndex:
    """Read a saved patch index; raises IndexFileError if a file is missing, corrupt or does
    not match its sidecar."""
    sidecar_path = patch_index_paths(stem)[".json"]
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFileError(f"patch index sidecar {sidecar_path} is missing; {REBUILD_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexFileError(f"patch index sidecar {sidecar_path} is unreadable ({type(error).__name__}); "
                             f"{REBUILD_HINT}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format_version") != PATCH_SIDECAR_VERSION:
        raise IndexFileError(f"patch index sidecar {sidecar_path} is not version {PATCH_SIDECAR_VERSION}; "
                             f"{REBUILD_HINT}")
    paths = patch_index_paths(stem, tuple(sidecar.get("file_bytes", {})))
    for suffix, size in sidecar.get("file_bytes", {}).items():
        path = paths[suffix]
        if not path.is_file() or path.stat().st_size != size:
            raise IndexFileError(f"{path} is missing or does not match its sidecar {sidecar_path}; {REBUILD_HINT}")
    try:
        index = faiss.read_index(str(paths[".faiss"]))
        ids = np.load(paths[".ids.npy"], mmap_mode="r", allow_pickle=False)
    except (RuntimeError, ValueError, OSError) as error:
        raise IndexFileError(f"patch index {paths['.faiss']} is corrupt or unreadable "
                             f"({str(error).strip().splitlines()[-1][:120]}); {REBUILD_HINT}") from None
    if index.ntotal != sidecar["count"] or ids.shape != (sidecar["count"],) or index.d != sidecar["dimension"]:
        raise IndexFileError(f"patch index {paths['.faiss']} holds {index.ntotal} vectors of {index.d}-d and "
                             f"{ids.shape[0]} ids, its sidecar records {sidecar['count']} of "
                             f"{sidecar['dimension']}-d; {REBUILD_HINT}")
    return PatchIndex(index=index, ids=ids, sidecar=sidecar, path=Path(stem))


def _replace(path: Path, write) -> None:
    """Write a file through a temporary sibling (`threads_search.atomic`); `write(temporary)`."""
    with atomic_path(path) as temporary:
        if path.suffix == ".npy":  # np.save appends .npy to a name that lacks it: hand it a file object
            with open(temporary, "wb") as handle:
                write(handle)
        else:
            write(temporary)
