"""Metadata columns of `items`: a metadata table's columns added and filled in (types kept)."""

from __future__ import annotations

from threads_search.atlas.store import Atlas, quote_identifier
from threads_search.errors import InputError
from threads_search.readers.metadata_csv import MetadataTable


def _condition(metadata: MetadataTable, modality: str | None) -> tuple[str, list]:
    key = quote_identifier(metadata.key_column)
    if metadata.key_column == "patient_id":
        return f"items.patient_id = m.{key}", []
    return f"items.item_id = m.{key} AND items.modality = ?", [modality]


def metadata_changes(atlas: Atlas, metadata: MetadataTable, modality: str | None) -> tuple[int, int]:
    """(rows the table matches, rows whose values it would change): a re-run that changes nothing writes nothing."""
    import duckdb

    value_columns = metadata.value_columns()
    condition, parameters = _condition(metadata, modality)
    with atlas.registered("incoming_metadata", metadata.table):
        matched = atlas.sql(f"SELECT count(*) FROM items JOIN incoming_metadata AS m ON {condition}", parameters).fetchone()[0]
        existing = set(atlas.item_columns())
        if any(c not in existing for c in value_columns):
            return int(matched), int(matched)
        differs = " OR ".join(f"items.{quote_identifier(c)} IS DISTINCT FROM TRY_CAST(m.{quote_identifier(c)} AS "
                              f"{_column_type(atlas, c)})" for c in value_columns) or "FALSE"
        try:
            changed = atlas.sql(f"SELECT count(*) FROM items JOIN incoming_metadata AS m ON {condition} WHERE {differs}",
                                parameters).fetchone()[0]
        except duckdb.Error:
            changed = matched  # let the update itself report what does not fit
    return int(matched), int(changed)


def _column_type(atlas: Atlas, column: str) -> str:
    return atlas.sql("SELECT data_type FROM duckdb_columns() WHERE table_name = 'items' AND column_name = ?",
                     [column]).fetchone()[0]


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
        condition, parameters = _condition(metadata, modality)
        import duckdb

        try:
            atlas.sql(f"UPDATE items SET {', '.join(assignments)} FROM incoming_metadata AS m WHERE {condition}", parameters)
        except duckdb.ConversionException as error:
            raise InputError(f"{metadata.path}: a column's values do not fit the type already in the atlas "
                             f"({str(error).splitlines()[0]})") from None
        matched = atlas.sql(f"SELECT count(*) FROM items JOIN incoming_metadata AS m ON {condition}", parameters).fetchone()[0]
    return int(matched)
