"""Metadata CSVs (SPEC §3): one row per slide (`slide_id`), sample (`sample_id`) or patient
(`patient_id`), any other columns. Columns become columns of the atlas's `items` table, which
is what `--where` filters see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from threads_search.atlas.store import CORE_ITEM_COLUMNS, Atlas, quote_identifier
from threads_search.errors import InputError

KEY_COLUMNS = ("slide_id", "sample_id", "patient_id")


@dataclass
class MetadataTable:
    """A parsed metadata CSV: `key_column` names what each row describes."""

    path: Path
    key_column: str
    table: "object"  # pyarrow.Table

    @property
    def keys(self) -> list[str]:
        return [str(v) for v in self.table.column(self.key_column).to_pylist()]

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist() if name in self.table.column_names else [None] * self.table.num_rows

    def value_columns(self) -> list[str]:
        return [c for c in self.table.column_names if c not in CORE_ITEM_COLUMNS and c not in KEY_COLUMNS]


def _sql_string(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def read_metadata_csv(path: str | os.PathLike, key_column: str) -> MetadataTable:
    """Read a metadata CSV keyed by `key_column` (falls back to `patient_id` for patient-level tables)."""
    import duckdb

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such metadata file")
    try:
        table = duckdb.connect().sql(f"SELECT * FROM read_csv({_sql_string(path)}, header = true)").to_arrow_table()
    except duckdb.Error as error:
        raise InputError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    columns = table.column_names
    if key_column not in columns:
        if "patient_id" not in columns:
            raise InputError(f"{path}: no '{key_column}' or 'patient_id' column (columns: {', '.join(columns)})")
        key_column = "patient_id"
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = table.column(key_column)
    if keys.null_count:
        row = keys.to_pylist().index(None)
        raise InputError(f"{path}: row {row + 2}, column {key_column}: empty id")
    table = table.set_column(columns.index(key_column), key_column, pc.cast(keys, pa.string()))
    seen: dict[str, int] = {}
    for row, key in enumerate(table.column(key_column).to_pylist()):
        if key in seen:
            raise InputError(f"{path}: row {row + 2}, column {key_column}: duplicate id '{key}' (first at row {seen[key] + 2})")
        seen[key] = row
    for reserved in ("vid", "modality", "item_id"):
        if reserved in columns:
            raise InputError(f"{path}: column '{reserved}' is reserved by the atlas; rename it")
    return MetadataTable(path=path, key_column=key_column, table=table)


def apply_metadata(atlas: Atlas, metadata: MetadataTable, modality: str | None) -> int:
    """Copy metadata columns onto atlas items (inside the caller's transaction); returns rows matched.

    Rows keyed by slide/sample id update that modality's items; patient-level rows update
    every item of the patient, whatever its modality.
    """
    value_columns = metadata.value_columns()
    if not value_columns:
        return 0
    connection = atlas.connection
    connection.register("incoming_metadata", metadata.table)
    try:
        existing = {row[0]: row[1] for row in atlas.sql(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'items'").fetchall()}
        incoming_types = {row[0]: row[1] for row in atlas.sql(
            "SELECT column_name, column_type FROM (DESCRIBE incoming_metadata)").fetchall()}
        for column in value_columns:
            if column not in existing:
                atlas.sql(f"ALTER TABLE items ADD COLUMN {quote_identifier(column)} {incoming_types[column]}")
        assignments = []
        for column in value_columns:
            target_type = existing.get(column, incoming_types[column])
            assignments.append(f"{quote_identifier(column)} = CAST(m.{quote_identifier(column)} AS {target_type})")
        key = quote_identifier(metadata.key_column)
        if metadata.key_column == "patient_id":
            condition = f"items.patient_id = m.{key}"
            parameters: list = []
        else:
            condition = f"items.item_id = m.{key} AND items.modality = ?"
            parameters = [modality]
        import duckdb

        try:
            atlas.sql(f"UPDATE items SET {', '.join(assignments)} FROM incoming_metadata AS m WHERE {condition}", parameters)
        except duckdb.ConversionException as error:
            raise InputError(f"{metadata.path}: a column's values do not fit the type already in the atlas "
                             f"({str(error).splitlines()[0]})") from None
        matched = atlas.sql(f"SELECT count(*) FROM items JOIN incoming_metadata AS m ON {condition}", parameters).fetchone()[0]
    finally:
        connection.unregister("incoming_metadata")
    return int(matched)


def coverage_warnings(metadata: MetadataTable, item_ids: list[str], source: Path, item_noun: str,
                      strict: bool, item_paths: dict[str, Path] | None = None) -> list[str]:
    """One-liners for metadata rows without an item and items without a metadata row.

    `item_noun` names an item ('feature file', 'sample'); `source` is where the items came from,
    or `item_paths` gives each item's own file (then the first unmatched file is named).
    With `strict`, the first mismatch is an InputError instead.
    """
    keys = metadata.keys
    known_keys, known_items = set(keys), set(item_ids)
    orphan_rows = [k for k in keys if k not in known_items]
    unmatched_items = [i for i in item_ids if i not in known_keys]
    messages = []
    if orphan_rows:
        messages.append(f"{metadata.path}: {len(orphan_rows)} metadata row(s) have no {item_noun} in {source} "
                        f"(first: '{orphan_rows[0]}')")
    if unmatched_items:
        where = item_paths[unmatched_items[0]] if item_paths else source
        messages.append(f"{where}: {len(unmatched_items)} {item_noun}(s) have no metadata row in {metadata.path} "
                        f"(first: '{unmatched_items[0]}')")
    if strict and messages:
        raise InputError(messages[0])
    return messages
