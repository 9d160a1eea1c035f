"""Metadata columns of `items`: a metadata table's columns added and filled in (types kept)."""

from __future__ import annotations

from threads_search.atlas.store import Atlas, quote_identifier
from threads_search.errors import InputError
from threads_search.readers.metadata_csv import MetadataTable


def apply_metadata(atlas: Atlas, metadata: MetadataTable, modality: str | None) -> int:
    """Copy metadata columns onto atlas items (inside the caller's transaction); returns rows matched.

    Rows keyed by slide/sample id update that modality's items; patient-level rows update
    every item of the patient, whatever its modality.
    """
    value_columns = metadata.value_columns()
    if not value_columns:
        return 0
    with atlas.registered("incoming_metadata", metadata.table):
        existing = {row[0]: row[1] for row in atlas.sql(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'items'").fetchall()}
        incoming_types = {row[0]: row[1] for row in atlas.sql(
            "SELECT column_name, column_type FROM (DESCRIBE incoming_metadata)").fetchall()}
        # A column empty in every row has no type of its own; it is stored as text.
        incoming_types = {c: ("VARCHAR" if t == '"NULL"' or t == "NULL" else t) for c, t in incoming_types.items()}
        for column in value_columns:
            if column not in existing:
                atlas.sql(f"ALTER TABLE items ADD COLUMN {quote_identifier(column)} {incoming_types[column]}")
                atlas.invalidate()
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
    return int(matched)
