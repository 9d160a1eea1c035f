"""Reading the atlas's own Parquet files (embedding parts, profile batches), with one-line errors.

A part that is missing, not a regular file (a FIFO would block forever), truncated or not
Parquet is named with what rebuilds it, instead of a traceback.
"""

from __future__ import annotations

from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasDamagedError

REBUILD = {"embedding part": "then `threads-search embed {root}`", "profile batch": "then ingest the profile file again"}


def read_atlas_parquet(atlas: Atlas, relative: str, what: str, columns: list[str] | None = None):
    """A pyarrow Table of one of the atlas's Parquet files (only `columns`, if given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = atlas.path(relative)
    hint = f"run `threads-search check {atlas.root} --repair`, " + REBUILD[what].format(root=atlas.root)
    if not path.is_file():
        state = "is missing" if not path.exists() else "is not a regular file"
        raise AtlasDamagedError(f"{path}: {what} {state}; {hint}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise AtlasDamagedError(f"{path}: unreadable {what} ({str(error).splitlines()[0]}); {hint}") from None
