"""The int64 id of one patch in a patch index: (slide vid, patch row), packed and unpacked.

Layout (bit 63 = sign, always 0, so every id is a valid non-negative faiss id)::

    bit  62 ........... 24 | 23 ............ 0
         slide vid (39 bits) | patch row (24 bits)

    patch_id = (vid << 24) | row

- `vid` is the slide's atlas vector id (`items.vid`), not its position in any list. A slide
  that is replaced (re-ingested with new features) gets a new vid, so the ids of its old
  patches can never be read as patches of the new file: they name a vid the atlas no longer
  holds, and the query engine drops them.
- `row` is the patch's row in the slide's feature file (`features[row]`, `coords[row]`), whatever
  subset of the rows the index holds (a mosaic keeps some rows, with their own row numbers).
- Limits: rows < 2^24 = 16,777,216 per slide (a 100k-patch slide uses under 1 %), vids <
  2^39 ~ 5.5e11.
- The patches of one slide are the contiguous id range [vid << 24, (vid + 1) << 24), which
  `slide_id_range` gives: excluding a slide (e.g. the query patient's) is one range test.
- Ids sort by slide, then by row: a slide-ordered build yields ascending ids.
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError

ROW_BITS = 24
VID_BITS = 39
MAX_ROWS_PER_SLIDE = 1 << ROW_BITS
MAX_VID = (1 << VID_BITS) - 1
_ROW_MASK = MAX_ROWS_PER_SLIDE - 1


def encode_patch_ids(vids: np.ndarray | int, rows: np.ndarray | int) -> np.ndarray:
    """int64 patch ids of (vid, row) pairs; `vids` and `rows` broadcast against each other.

    Raises InputError for a negative value, a vid above MAX_VID or a row of 2^24 or more.
    """
    vids = np.asarray(vids, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if vids.size and (vids.min() < 0 or vids.max() > MAX_VID):
        bad = int(vids[(vids < 0) | (vids > MAX_VID)].flat[0])
        raise InputError(f"slide vid {bad} cannot be encoded in a patch id (0 <= vid <= {MAX_VID})")
    if rows.size and (rows.min() < 0 or rows.max() >= MAX_ROWS_PER_SLIDE):
        bad = int(rows[(rows < 0) | (rows >= MAX_ROWS_PER_SLIDE)].flat[0])
        raise InputError(
            f"patch row {bad} cannot be encoded in a patch id (a slide holds at most "
            f"{MAX_ROWS_PER_SLIDE:,} patches)"
        )
    return (vids << ROW_BITS) | rows


def decode_patch_ids(patch_ids: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(vids, rows) int64 arrays of the given patch ids (negative ids, faiss's empty slot -1,
    decode to vid -1, row -1)."""
    ids = np.asarray(patch_ids, dtype=np.int64)
    empty = ids < 0
    vids = np.where(empty, -1, ids >> ROW_BITS)
    rows = np.where(empty, -1, ids & _ROW_MASK)
    return vids, rows


def slide_id_range(vid: int) -> tuple[int, int]:
    """[first, end) patch ids of slide `vid`: every id of its patches lies in it."""
    first = int(encode_patch_ids(vid, 0))
    return first, first + MAX_ROWS_PER_SLIDE
