"""Facets: value counts of metadata columns, and selections of values turned into id sets.

A selection is `{column: [value, ...]}`: an item matches when, for every column, its value
(as text) is one of the listed ones (None selects missing values). Columns are checked
against the atlas's metadata columns and quoted; values are bound parameters, never spliced
into SQL. Used by the search (facets narrow the candidates inside the FAISS search, like
`--where`) and by the review page's filter panel.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from threads_search.atlas.store import Atlas, quote_identifier
from threads_search.errors import InputError

Selection = Mapping[str, Sequence[str | None]]
MAX_FACET_VALUES = 50
MAX_NUMERIC_FACET_VALUES = 12  # a numeric column with more values (age, survival) is a range, not a facet
_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "UBIGINT",
                  "UINTEGER", "USMALLINT", "UTINYINT")


def check_selection(atlas: Atlas, selection: Selection | None) -> dict[str, list[str | None]]:
    """The selection with unknown columns refused (one line listing the columns); empty lists dropped."""
    if not selection:
        return {}
    columns = atlas.metadata_columns()
    checked = {}
    for column, values in selection.items():
        if column not in columns:
            raise InputError(f"facet '{column}': no such metadata column (columns: {', '.join(columns) or 'none'})")
        values = [None if v is None else str(v) for v in values]
        if values:
            checked[column] = values
    return checked


def _clause(column: str, values: list[str | None]) -> tuple[str, list[str]]:
    """`(col IN (?, ...) OR col IS NULL)` over the column as text, and its parameters."""
    name = f"CAST({quote_identifier(column)} AS VARCHAR)"
    present = [v for v in values if v is not None]
    parts = [f"{name} IN ({', '.join('?' for _ in present)})"] if present else []
    if len(present) < len(values):
        parts.append(f"{name} IS NULL")
    return "(" + " OR ".join(parts) + ")", present


def _conditions(selection: dict[str, list[str | None]], skip: str | None = None) -> tuple[str, list[str]]:
    clauses, parameters = [], []
    for column, values in selection.items():
        if column == skip:
            continue
        clause, bound = _clause(column, values)
        clauses.append(clause)
        parameters += bound
    return (" AND ".join(clauses) if clauses else "TRUE"), parameters


def selection_vids(atlas: Atlas, modality: str, selection: Selection | None) -> np.ndarray | None:
    """Sorted int64 vids of `modality` items matching the selection; None when nothing is selected."""
    checked = check_selection(atlas, selection)
    if not checked:
        return None
    condition, parameters = _conditions(checked)
    rows = atlas.sql(f"SELECT vid FROM items WHERE modality = ? AND {condition} ORDER BY vid", [modality, *parameters])
    return np.array([r[0] for r in rows.fetchall()], dtype=np.int64)


class _AllowedVids:
    """A temporary view of candidate vids for a batch of queries (None = every item)."""

    def __init__(self, atlas: Atlas, allowed: np.ndarray | None) -> None:
        self.atlas, self.allowed = atlas, allowed
        self.name = f"allowed_vids_{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> str:
        if self.allowed is None:
            return "TRUE"
        import pyarrow as pa

        self.atlas.connection.register(self.name, pa.table({"vid": pa.array(self.allowed, pa.int64())}))
        return f"vid IN (SELECT vid FROM {self.name})"

    def __exit__(self, *exc) -> None:
        if self.allowed is not None:
            self.atlas.connection.unregister(self.name)


def facet_counts(atlas: Atlas, modality: str, columns: Sequence[str], allowed: np.ndarray | None = None,
                 selection: Selection | None = None) -> dict[str, list[tuple[str | None, int]]]:
    """Per column, (value, count) of `modality` items within `allowed` vids (e.g. a `--where`) that
    match the selection on the *other* columns (so several values of one column can be picked),
    most frequent first."""
    checked = check_selection(atlas, selection)
    known = atlas.metadata_columns()
    counts = {}
    with _AllowedVids(atlas, allowed) as within:
        for column in columns:
            if column not in known:
                raise InputError(f"facet '{column}': no such metadata column (columns: {', '.join(known) or 'none'})")
            condition, parameters = _conditions(checked, skip=column)
            rows = atlas.sql(f"SELECT CAST({quote_identifier(column)} AS VARCHAR) AS value, count(*) AS n FROM items "
                             f"WHERE modality = ? AND {within} AND {condition} GROUP BY value "
                             f"ORDER BY n DESC, value NULLS LAST", [modality, *parameters]).fetchall()
            counts[column] = [(value, int(n)) for value, n in rows]
    return counts


def facet_columns(atlas: Atlas, modality: str, max_values: int = MAX_FACET_VALUES) -> list[str]:
    """Metadata columns worth a facet among `modality` items: 2 to `max_values` distinct values
    (numeric ones at most MAX_NUMERIC_FACET_VALUES)."""
    columns = atlas.metadata_columns()
    if not columns:
        return []
    types = dict(atlas.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'items'").fetchall())
    distinct = ", ".join(f"count(DISTINCT {quote_identifier(c)})" for c in columns)
    row = atlas.sql(f"SELECT {distinct} FROM items WHERE modality = ?", [modality]).fetchone()
    limit = {c: MAX_NUMERIC_FACET_VALUES if str(types.get(c, "")).startswith(_NUMERIC_TYPES) else max_values
             for c in columns}
    return [c for c, n in zip(columns, row) if 2 <= n <= limit[c]]


def complete_item_ids(atlas: Atlas, modality: str, text: str, limit: int = 20) -> list[str]:
    """Item ids of `modality` starting with `text`, then those containing it, at most `limit`."""
    rows = atlas.sql("SELECT item_id FROM items WHERE modality = ? AND contains(item_id, ?) "
                     "ORDER BY NOT starts_with(item_id, ?), item_id LIMIT ?", [modality, text, text, int(limit)])
    return [r[0] for r in rows.fetchall()]


def patients_of(atlas: Atlas, vids: Sequence[int]) -> dict[int, str]:
    """The patient of each vid."""
    if not len(vids):
        return {}
    import pyarrow as pa

    name = f"patient_vids_{uuid.uuid4().hex[:12]}"
    atlas.connection.register(name, pa.table({"vid": pa.array(np.asarray(vids, np.int64))}))
    try:
        rows = atlas.sql(f"SELECT vid, patient_id FROM items WHERE vid IN (SELECT vid FROM {name})").fetchall()
    finally:
        atlas.connection.unregister(name)
    return dict(rows)


def item_by_vid(atlas: Atlas, vid: int) -> tuple[str, str, str] | None:
    """(modality, item_id, patient_id) of one vid, or None."""
    return atlas.sql("SELECT modality, item_id, patient_id FROM items WHERE vid = ?", [int(vid)]).fetchone()


def vids_of(atlas: Atlas, modality: str, item_ids: Sequence[str]) -> dict[str, int]:
    """The vid of each item id of `modality` (unknown ids left out)."""
    if not item_ids:
        return {}
    placeholders = ", ".join("?" for _ in item_ids)
    rows = atlas.sql(f"SELECT item_id, vid FROM items WHERE modality = ? AND item_id IN ({placeholders})",
                     [modality, *item_ids]).fetchall()
    return dict(rows)
