"""Metadata CSVs (SPEC §3): one row per slide (`slide_id`), sample (`sample_id`) or patient
(`patient_id`), any other columns. Their columns become the atlas's metadata columns, which is
what filters see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from threads_search.errors import InputError

KEY_COLUMNS = ("slide_id", "sample_id", "patient_id")
RESERVED_COLUMNS = ("vid", "modality", "item_id")
MAX_COLUMNS = 10_000
MAX_HEADER_BYTES = 4 << 20


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
        return [c for c in self.table.column_names if c not in KEY_COLUMNS and c not in RESERVED_COLUMNS]


def _check_header(path: Path) -> None:
    """Refuse absurd headers before parsing (a 10^6-column header would grow to gigabytes)."""
    with open(path, "rb") as handle:
        header = handle.readline(MAX_HEADER_BYTES + 1)
    if len(header) > MAX_HEADER_BYTES:
        raise InputError(f"{path}: header line longer than {MAX_HEADER_BYTES >> 20} MiB; not a metadata table")
    if header.count(b",") + 1 > MAX_COLUMNS:
        raise InputError(f"{path}: {header.count(b',') + 1} columns in the header (at most {MAX_COLUMNS})")


def read_metadata_csv(path: str | os.PathLike, key_column: str) -> MetadataTable:
    """Read a metadata CSV keyed by `key_column` (falls back to `patient_id` for patient-level tables)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as csv

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such metadata file")
    _check_header(path)
    try:
        table = csv.read_csv(path, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as error:
        raise InputError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    columns = table.column_names
    if key_column not in columns:
        if "patient_id" not in columns:
            raise InputError(f"{path}: no '{key_column}' or 'patient_id' column (columns: {', '.join(columns)})")
        key_column = "patient_id"
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
    for reserved in RESERVED_COLUMNS:
        if reserved in columns:
            raise InputError(f"{path}: column '{reserved}' is reserved by the atlas; rename it")
    return MetadataTable(path=path, key_column=key_column, table=table)
