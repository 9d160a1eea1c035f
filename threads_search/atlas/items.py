"""Items: every slide and profile of the atlas, one row each in `items`, with its vector id,
patient and metadata columns. What the other stages read about items comes from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from threads_search.atlas.arrow import int64_column
from threads_search.atlas.store import Atlas, quote_identifier
from threads_search.errors import InputError

_TCGA_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(-|$)")


def default_patient_id(item_id: str) -> str:
    """TCGA barcodes carry the patient in their first 12 characters; otherwise the id itself."""
    match = _TCGA_BARCODE.match(item_id)
    return match.group(1) if match else item_id


def upsert_items(atlas: Atlas, modality: str, item_ids: list[str], patient_ids: list[str | None],
                 sample_ids: list[str | None] | None = None) -> None:
    """Insert items, or give existing ones a new vector id (their data changed), in bulk.

    A new vid means embeddings and index entries of the old data can never be mistaken for
    the new; metadata columns (and the patient, unless a new one is given) stay as they were.
    """
    import pyarrow as pa

    if not item_ids:
        return
    incoming = pa.table({
        "item_id": pa.array(item_ids, pa.string()),
        "patient_id": pa.array(patient_ids, pa.string()),
        "default_patient_id": pa.array([default_patient_id(i) for i in item_ids], pa.string()),
        "sample_id": pa.array(sample_ids or [None] * len(item_ids), pa.string()),
    })
    with atlas.registered("incoming_items", incoming):
        atlas.sql("""UPDATE items SET vid = nextval('vid_sequence'), patient_id = coalesce(n.patient_id, items.patient_id),
                            sample_id = coalesce(n.sample_id, items.sample_id)
                     FROM incoming_items n WHERE items.modality = ? AND items.item_id = n.item_id""", [modality])
        atlas.sql("""INSERT INTO items (vid, modality, item_id, patient_id, sample_id)
                     SELECT nextval('vid_sequence'), ?, n.item_id, coalesce(n.patient_id, n.default_patient_id), n.sample_id
                     FROM incoming_items n
                     WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.modality = ? AND i.item_id = n.item_id)""",
                  [modality, modality])


def insert_new_items(atlas: Atlas, modality: str, item_ids: list[str], patient_ids: list[str | None]) -> None:
    """Items the atlas does not hold yet (a vid each; the patient given, else the id's default)."""
    import pyarrow as pa

    incoming = pa.table({"item_id": pa.array(item_ids, pa.string()),
                         "patient_id": pa.array([p or default_patient_id(i) for i, p in zip(item_ids, patient_ids)],
                                                pa.string())})
    with atlas.registered("new_items", incoming):
        atlas.sql("INSERT INTO items (vid, modality, item_id, patient_id) "
                  "SELECT nextval('vid_sequence'), ?, item_id, patient_id FROM new_items", [modality])


def pair_items(atlas: Atlas, modality: str, item_ids: list[str], patient_ids: list[str | None],
               sample_ids: list[str | None] | None = None) -> None:
    """Give existing items a patient / sample (where one is given) and KEEP their vector ids: for
    data that is new beside what they hold (patch features of a slide known by its embeddings)."""
    import pyarrow as pa

    if not item_ids:
        return
    incoming = pa.table({"item_id": pa.array(item_ids, pa.string()), "patient_id": pa.array(patient_ids, pa.string()),
                         "sample_id": pa.array(sample_ids or [None] * len(item_ids), pa.string())})
    with atlas.registered("paired_items", incoming):
        atlas.sql("""UPDATE items SET patient_id = coalesce(n.patient_id, items.patient_id),
                            sample_id = coalesce(n.sample_id, items.sample_id)
                     FROM paired_items n WHERE items.modality = ? AND items.item_id = n.item_id""", [modality])


def count_items(atlas: Atlas, modality: str) -> int:
    return int(atlas.modality_vids(modality).size)


def find_item(atlas: Atlas, item_id: str, modalities: Sequence[str]) -> list[tuple[int, str, str]]:
    """(vid, modality, patient_id) of every item with this id among `modalities`, by modality."""
    lookup = warm_lookup(atlas)
    if lookup is not None:
        return lookup.find(item_id, modalities)
    rows = atlas.sql("SELECT vid, modality, patient_id FROM items WHERE item_id = ? AND list_contains(?, modality) "
                     "ORDER BY modality", [item_id, list(modalities)]).fetchall()
    return [(int(v), m, p) for v, m, p in rows]


def find_items(atlas: Atlas, item_ids: Sequence[str], modalities: Sequence[str]) -> list[tuple[str, int]]:
    """(item_id, vid) of every item with one of these ids among `modalities`."""
    import pyarrow as pa

    with atlas.registered("wanted_ids", pa.table({"item_id": pa.array(list(item_ids), pa.string())})):
        rows = atlas.sql("SELECT item_id, vid FROM items WHERE item_id IN (SELECT item_id FROM wanted_ids) "
                         "AND list_contains(?, modality)", [list(modalities)]).fetchall()
    return [(item, int(vid)) for item, vid in rows]


def vid_by_item(atlas: Atlas, modality: str) -> dict[str, int]:
    """item_id -> vid for one modality."""
    return {item: int(vid) for item, vid in atlas.sql("SELECT item_id, vid FROM items WHERE modality = ?", [modality]).fetchall()}


def patient_by_item(atlas: Atlas, modality: str) -> dict[str, str]:
    """item_id -> patient_id for one modality."""
    return dict(atlas.sql("SELECT item_id, patient_id FROM items WHERE modality = ?", [modality]).fetchall())


def patient_vids(atlas: Atlas, modality: str, patient_id: str) -> np.ndarray:
    """Sorted vids of one patient's items of `modality`."""
    lookup = atlas.peek("item lookup")  # built by find_item on a warm atlas
    if lookup is not None:
        return lookup.patient_vids(modality, patient_id)
    rows = atlas.sql("SELECT vid FROM items WHERE modality = ? AND patient_id = ? ORDER BY vid",
                     [modality, patient_id]).fetchall()
    return np.array([r[0] for r in rows], np.int64)


def require_metadata_column(atlas: Atlas, column: str, option: str = "--label") -> str:
    """`column` if it is a metadata column of the atlas, else a one-line InputError listing them."""
    columns = atlas.metadata_columns()
    if column not in columns:
        raise InputError(f"{option} {column}: no such metadata column (columns: {', '.join(columns) or 'none'})")
    return column


@dataclass
class ItemTable:
    """Selected items of one modality, in vid order; `values[column]` holds each column as text (None if missing)."""

    vids: np.ndarray  # (n,) int64
    item_ids: list[str]
    patient_ids: list[str]
    values: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(self.item_ids)


def item_table(atlas: Atlas, modality: str, vids: np.ndarray | None = None, columns: Sequence[str] = ()) -> ItemTable:
    """Items of `modality` (only `vids`, if given) with the named item columns cast to text.

    Column names must be item columns of the atlas (callers check user-given ones with
    `require_metadata_column`); they are quoted as identifiers, never spliced as text.
    """
    import pyarrow as pa

    known = set(atlas.item_columns())
    for column in columns:
        if column not in known:
            raise InputError(f"no column '{column}' in the atlas (columns: {', '.join(atlas.filter_columns())})")
    casts = "".join(f", CAST({quote_identifier(c)} AS VARCHAR) AS {quote_identifier('value_' + str(i))}"
                    for i, c in enumerate(columns))
    base = f"SELECT vid, item_id, patient_id{casts} FROM items WHERE modality = ?"
    if vids is None:
        table = atlas.arrow(base + " ORDER BY vid", [modality])
    else:
        selected = pa.table({"vid": pa.array(np.asarray(vids, np.int64))})
        with atlas.registered("selected_vids", selected):
            table = atlas.arrow(base + " AND vid IN (SELECT vid FROM selected_vids) ORDER BY vid", [modality])
    return ItemTable(vids=int64_column(table, "vid"),
                     item_ids=table.column("item_id").to_pylist(), patient_ids=table.column("patient_id").to_pylist(),
                     values={c: table.column(f"value_{i}").to_pylist() for i, c in enumerate(columns)})


def item_metadata(atlas: Atlas, vids: Sequence[int]) -> dict[int, dict]:
    """Every column of the items with these vids (except vid itself), keyed by vid (a few: hits)."""
    if len(vids) == 0:
        return {}
    lookup = atlas.peek("item lookup")
    if lookup is not None:
        return lookup.metadata(vids)
    columns = [c for c in atlas.item_columns() if c != "vid"]
    selected = ", ".join(quote_identifier(c) for c in columns)
    # A list parameter, not a registered Arrow table: building one would import pandas (~0.3 s) on a cold search.
    rows = atlas.sql(f"SELECT vid, {selected} FROM items WHERE vid IN (SELECT unnest(?::BIGINT[]))",
                     [[int(v) for v in vids]]).fetchall()
    return {row[0]: dict(zip(columns, row[1:])) for row in rows}


def patient_labels(atlas: Atlas, modality: str, column: str) -> dict[str, str]:
    """patient_id -> one value of `column` (as text) over the patient's items of `modality`."""
    require_metadata_column(atlas, column)
    rows = atlas.sql(f"SELECT patient_id, any_value(CAST({quote_identifier(column)} AS VARCHAR)) FROM items "
                     f"WHERE modality = ? GROUP BY patient_id", [modality]).fetchall()
    return {p: v for p, v in rows if v is not None}


def column_summary(atlas: Atlas, column: str, max_levels: int) -> dict:
    """Distinct values of one item column and, up to `max_levels` of them, counts per modality."""
    name = quote_identifier(column)
    n_levels = atlas.sql(f"SELECT count(DISTINCT {name}) FROM items").fetchone()[0]
    if n_levels > max_levels:
        return {"distinct_values": n_levels}
    rows = atlas.sql(f"SELECT CAST({name} AS VARCHAR), modality, count(*) FROM items GROUP BY ALL ORDER BY 1 NULLS LAST, 2").fetchall()
    counts: dict[str, dict[str, int]] = {}
    for value, modality, count in rows:
        counts.setdefault("(missing)" if value is None else value, {})[modality] = count
    return {"distinct_values": n_levels, "counts": counts}


def delete_items(atlas: Atlas, vids: np.ndarray) -> dict[str, int]:
    """Delete items (and their slide / profile rows) by vid, inside the caller's transaction.

    Returns the number deleted per modality. Their embeddings and index entries become
    unreachable at once (readers keep only vids that exist) and are compacted away by `index`.
    """
    import pyarrow as pa

    selected = pa.table({"vid": pa.array(np.asarray(vids, np.int64))})
    with atlas.registered("removed_vids", selected):
        counts = dict(atlas.sql("SELECT modality, count(*) FROM items WHERE vid IN (SELECT vid FROM removed_vids) "
                                "GROUP BY modality").fetchall())
        atlas.sql("""DELETE FROM slides WHERE slide_id IN (SELECT item_id FROM items WHERE modality = 'slides'
                     AND vid IN (SELECT vid FROM removed_vids))""")
        atlas.sql("""DELETE FROM profiles WHERE (modality, sample_id) IN (SELECT (modality, item_id) FROM items
                     WHERE modality <> 'slides' AND vid IN (SELECT vid FROM removed_vids))""")
        atlas.sql("DELETE FROM items WHERE vid IN (SELECT vid FROM removed_vids)")
    atlas.invalidate()
    return {m: int(n) for m, n in counts.items()}


class ItemLookup:
    """In-memory lookups over one generation's items: by item id, by patient, metadata by vid.

    Built from the items table once (about a second per million items), then every lookup is a
    dict access or a binary search: what a warm atlas (the service, an API session) uses
    instead of a scan per query.
    """

    def __init__(self, table) -> None:
        import pyarrow.compute as pc

        # combine_chunks: contiguous buffers make the k-row take of `metadata` ~10x faster at 10^6 items
        # (1.3 -> 0.12 ms for 10 hits, benchmarks/README.md "Query path").
        self.table = table.take(pc.sort_indices(table, [("vid", "ascending")])).combine_chunks()
        self.vids = int64_column(self.table, "vid")
        self.modalities = np.asarray(self.table.column("modality").to_pylist(), dtype=object)
        items = self.table.column("item_id").to_pylist()
        patients = self.table.column("patient_id").to_pylist()
        self._rows_of_item: dict[str, list[int]] = {}
        for row, item in enumerate(items):
            self._rows_of_item.setdefault(item, []).append(row)
        self._rows_of_patient: dict[tuple[str, str], list[int]] = {}
        for row, (patient, modality) in enumerate(zip(patients, self.modalities)):
            self._rows_of_patient.setdefault((modality, patient), []).append(row)
        self._patients = patients

    def find(self, item_id: str, modalities: Sequence[str]) -> list[tuple[int, str, str]]:
        rows = [r for r in self._rows_of_item.get(item_id, ()) if self.modalities[r] in modalities]
        return sorted(((int(self.vids[r]), str(self.modalities[r]), self._patients[r]) for r in rows), key=lambda x: x[1])

    def patient_vids(self, modality: str, patient_id: str) -> np.ndarray:
        return self.vids[self._rows_of_patient.get((modality, patient_id), [])]

    def metadata(self, vids: Sequence[int]) -> dict[int, dict]:
        vids = np.asarray(vids, np.int64)
        rows = np.searchsorted(self.vids, vids).clip(max=max(self.vids.size - 1, 0))
        found = rows[self.vids[rows] == vids] if self.vids.size else rows[:0]
        records = self.table.take(found).to_pylist()
        return {record.pop("vid"): record for record in records}


# An atlas builds the lookup at the second query of a generation: one-off commands (a CLI
# search) never pay for it, sessions that query again get dict-speed lookups.
WARM_AFTER_QUERIES = 2


def warm_lookup(atlas: Atlas) -> ItemLookup | None:
    """The generation's ItemLookup once the atlas is being queried repeatedly, else None."""
    if atlas.read_only is False:
        return None
    uses = atlas.cached("lookup uses", lambda: [0])
    uses[0] += 1
    if uses[0] < WARM_AFTER_QUERIES:
        return None
    return atlas.cached("item lookup", lambda: ItemLookup(atlas.arrow("SELECT * FROM items")))


def patients_per_value(atlas: Atlas, column: str) -> tuple[dict[str, int], int]:
    """Distinct patients per (text) value of an item column over every item of the atlas, any
    modality, and the distinct patients with a value at all; empty and blank cells are skipped."""
    if column not in set(atlas.item_columns()):
        raise InputError(f"no column '{column}' in the atlas (columns: {', '.join(atlas.filter_columns())})")
    value = f"trim(CAST({quote_identifier(column)} AS VARCHAR))"
    labelled = f"FROM items WHERE {value} IS NOT NULL AND {value} <> ''"
    counts = {str(v): int(n) for v, n in atlas.sql(
        f"SELECT CAST({quote_identifier(column)} AS VARCHAR), count(DISTINCT patient_id) {labelled} GROUP BY 1").fetchall()}
    (n_patients,) = atlas.sql(f"SELECT count(DISTINCT patient_id) {labelled}").fetchone()
    return counts, int(n_patients)
