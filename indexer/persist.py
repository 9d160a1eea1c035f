"""Save and load an index as `<name>.faiss` plus its JSON sidecar `<name>.json`.

Both files are written to a temporary name and renamed into place, the sidecar last: a sidecar
on disk always describes a complete index file. The sidecar records the index file's size, so
an index file replaced without its sidecar (an interrupted save) is detected on load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import faiss

from threads_search.atomic import atomic_path, write_json_atomic
from threads_search.errors import IndexFileError, ThreadsSearchError
from threads_search.indexer.bundle import REBUILD_HINT, SIDECAR_VERSION, IndexBundle, LoadedIndex
from threads_search.indexer.device import device_for_kind, replicate_to_gpu
from threads_search.indexer.kinds import get_kind

INDEX_SUFFIX = ".faiss"
SIDECAR_SUFFIX = ".json"


def index_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(`<stem>.faiss`, `<stem>.json`) for a path given with or without either suffix."""
    path = Path(path)
    if path.suffix in (INDEX_SUFFIX, SIDECAR_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + INDEX_SUFFIX), path.with_name(path.name + SIDECAR_SUFFIX)


def save_index(built: IndexBundle, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write `built` to `<path>.faiss` and `<path>.json` atomically; returns both paths.

    The CPU index is written (a GPU replica is never saved; `load_index` makes a new one).
    `built.sidecar` is updated with the saved count and the index file's size.
    """
    index_path, sidecar_path = index_paths(path)
    with atomic_path(index_path) as temporary:
        faiss.write_index(built.index, str(temporary))
    sidecar = dict(built.sidecar, count=built.count, index_file_bytes=index_path.stat().st_size)
    write_json_atomic(sidecar_path, sidecar)
    built.sidecar = sidecar
    return index_path, sidecar_path


def load_index(path: str | os.PathLike, device: str = "auto", mmap: bool = False) -> LoadedIndex:
    """Read `<path>.faiss` and its sidecar; place a search replica on the GPU if requested.

    `mmap`: map flat vector storage from the file instead of reading it (loading takes
    milliseconds; the index is then read-only: searches only, no adds).
    Raises IndexFileError (missing, unreadable or corrupt file, or a file that disagrees with
    its sidecar in kind, count, dimension or size) and DeviceError (gpu requested, none there).
    """
    index_path, sidecar_path = index_paths(path)
    sidecar = _read_sidecar(sidecar_path)
    if not index_path.is_file():
        raise IndexFileError(f"index file {index_path} is missing; {REBUILD_HINT}")
    if index_path.stat().st_size != sidecar.get("index_file_bytes"):
        raise IndexFileError(
            f"index file {index_path} has {index_path.stat().st_size} bytes but its sidecar "
            f"records {sidecar.get('index_file_bytes')}; {REBUILD_HINT}"
        )
    try:
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(index_path), flags)
    except RuntimeError as error:
        raise IndexFileError(
            f"index file {index_path} is corrupt or unreadable ({_faiss_cause(error)}); "
            f"{REBUILD_HINT}"
        ) from None
    _check_agreement(index, sidecar, index_path)
    loaded = LoadedIndex(index=index, sidecar=sidecar, path=index_path.with_suffix(""))
    _check_kind_fits(loaded, index_path)
    if device_for_kind(loaded.spec, device) == "gpu":
        loaded.gpu_index = replicate_to_gpu(index, loaded.search_params)
    return loaded


def _check_kind_fits(loaded: LoadedIndex, index_path: Path) -> None:
    """The sidecar's kind and parameters must drive this index file (an edited sidecar is refused here,
    not with a KeyError at the first search)."""
    spec = loaded.spec
    try:
        spec.search_parameters(loaded.search_params, loaded.index, None)
        if spec.tuning_knob is not None:
            spec.tuning_ladder(loaded.sidecar["build_params"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise IndexFileError(f"index sidecar {index_path.with_suffix('.json')} (kind {spec.name}) does not describe "
                             f"{index_path} ({type(error).__name__}: {error}); {REBUILD_HINT}") from None


def _faiss_cause(error: RuntimeError) -> str:
    """The message of a faiss exception without its C++ signature and source location."""
    lines = str(error).strip().splitlines() or ["unknown error"]
    return re.sub(r"^.*\.cpp:\d+: ", "", lines[-1])[:120]


def _read_sidecar(sidecar_path: Path) -> dict:
    if not sidecar_path.is_file():
        raise IndexFileError(f"index sidecar {sidecar_path} is missing; {REBUILD_HINT}")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexFileError(
            f"index sidecar {sidecar_path} is unreadable ({type(error).__name__}); {REBUILD_HINT}"
        ) from None
    required = (
        "format_version",
        "kind",
        "dimension",
        "count",
        "index_file_bytes",
        "search_params",
        "build_params",
    )
    missing = [key for key in required if not isinstance(sidecar, dict) or key not in sidecar]
    if missing:
        raise IndexFileError(
            f"index sidecar {sidecar_path} lacks {', '.join(missing)}; {REBUILD_HINT}"
        )
    if sidecar["format_version"] != SIDECAR_VERSION:
        raise IndexFileError(
            f"index sidecar {sidecar_path} has format version {sidecar['format_version']}, "
            f"this version reads {SIDECAR_VERSION}; {REBUILD_HINT}"
        )
    try:
        get_kind(sidecar["kind"])
    except ThreadsSearchError:
        raise IndexFileError(
            f"index sidecar {sidecar_path} names unknown kind {sidecar['kind']!r}; {REBUILD_HINT}"
        ) from None
    return sidecar


def _check_agreement(index: faiss.Index, sidecar: dict, index_path: Path) -> None:
    """The index file must hold what its sidecar says: an IDMap2 of that count and dimension."""
    if not isinstance(index, faiss.IndexIDMap2):
        raise IndexFileError(
            f"index file {index_path} holds a {type(index).__name__}, not an id-mapped index; "
            f"{REBUILD_HINT}"
        )
    for what, actual, recorded in (
        ("vectors", index.ntotal, sidecar["count"]),
        ("dimensions", index.d, sidecar["dimension"]),
    ):
        if actual != recorded:
            raise IndexFileError(
                f"index file {index_path} holds {actual} {what} but its sidecar records "
                f"{recorded}; {REBUILD_HINT}"
            )
