"""The atlas: one self-describing folder holding `atlas.duckdb`, Parquet files, models and indexes.

Layout (SPEC §4)::

    ATLAS/
      atlas.duckdb            tables below
      features/               copied patch-feature files (`ingest slides --copy`)
      profiles/               expression / mutation matrices as Parquet, one file per ingest batch
      models/<model_id>/      config.json + model.safetensors
      embeddings/<model_id>/  <modality>-<part>.parquet
      indexes/                <model_id>-<modality>.faiss + .json sidecar

Every table change happens in one DuckDB transaction; every file is written under a temporary
name and renamed into place before the transaction that references it commits, so an
interrupted command leaves the atlas as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from threads_search import __version__
from threads_search.errors import AtlasError, InputError

DATABASE_NAME = "atlas.duckdb"
FORMAT_VERSION = "1"
MODALITIES = ("slides", "expression", "mutations")
PROFILE_MODALITIES = ("expression", "mutations")
# Columns of `items` that belong to the atlas itself; metadata columns are added beside them.
CORE_ITEM_COLUMNS = ("vid", "modality", "item_id", "patient_id", "sample_id")

SCHEMA = """
CREATE TABLE atlas_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE SEQUENCE vid_sequence START 1;
CREATE TABLE items (
    vid BIGINT PRIMARY KEY,          -- the vector id every FAISS index uses
    modality VARCHAR NOT NULL,       -- slides | expression | mutations
    item_id VARCHAR NOT NULL,        -- slide_id or sample_id
    patient_id VARCHAR NOT NULL,     -- slides and profiles pair through it
    sample_id VARCHAR,               -- explicit pairing of a slide with a profile sample
    UNIQUE (modality, item_id)
);
CREATE TABLE slides (
    slide_id VARCHAR PRIMARY KEY,
    path VARCHAR NOT NULL,           -- absolute, or relative to the atlas when copied
    copied BOOLEAN NOT NULL,
    file_size BIGINT NOT NULL,
    file_mtime_ns BIGINT NOT NULL,
    fingerprint VARCHAR NOT NULL,
    file_format VARCHAR NOT NULL,    -- trident | clam | pt
    n_patches INTEGER NOT NULL,
    feature_dim INTEGER NOT NULL,
    dtype VARCHAR NOT NULL,
    patch_encoder VARCHAR,
    patch_size_level0 INTEGER,
    magnification DOUBLE,
    attrs VARCHAR,                   -- JSON of the file's attributes
    ingested_at TIMESTAMP NOT NULL,
    wsi_path VARCHAR,                -- the raw slide (absolute), when known; see atlas/slide_images.py
    thumbnail_path VARCHAR,          -- a whole-slide picture (absolute), when known
    thumbnail_downsample DOUBLE      -- level-0 px per thumbnail px
);
CREATE TABLE profile_batches (
    batch_id VARCHAR PRIMARY KEY,
    modality VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    parquet VARCHAR NOT NULL,        -- relative to the atlas
    genes VARCHAR[] NOT NULL,
    scale VARCHAR NOT NULL,          -- counts | tpm | log | binary
    scale_reason VARCHAR NOT NULL,
    n_samples INTEGER NOT NULL,
    ingested_at TIMESTAMP NOT NULL
);
CREATE TABLE profiles (
    modality VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    row_index INTEGER NOT NULL,      -- row of the sample in its batch's Parquet file
    PRIMARY KEY (modality, sample_id)
);
CREATE TABLE models (
    model_id VARCHAR PRIMARY KEY,
    recipe VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    config VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE embeddings (
    model_id VARCHAR NOT NULL,
    modality VARCHAR NOT NULL,
    part VARCHAR NOT NULL,           -- Parquet file relative to the atlas
    n_vectors INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (model_id, modality, part)
);
CREATE TABLE indexes (
    model_id VARCHAR NOT NULL,
    modality VARCHAR NOT NULL,
    path VARCHAR NOT NULL,           -- relative to the atlas, without extension
    kind VARCHAR NOT NULL,
    n_vectors INTEGER NOT NULL,
    recall_at_10 DOUBLE,
    built_at TIMESTAMP NOT NULL,
    PRIMARY KEY (model_id, modality)
);
CREATE TABLE prototypes (
    name VARCHAR NOT NULL,
    class_label VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    modality VARCHAR NOT NULL,
    label_column VARCHAR NOT NULL,
    n_members INTEGER NOT NULL,
    vector FLOAT[] NOT NULL,
    PRIMARY KEY (name, class_label)
);
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def quote_identifier(name: str) -> str:
    """SQL identifier quoting, so metadata columns may carry any name a CSV header has."""
    return '"' + name.replace('"', '""') + '"'


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str) -> str:
    """A file-system-safe rendering of an id (ids may contain '/' or spaces)."""
    return _SAFE_NAME.sub("_", name)


@dataclass
class Rows:
    """A statement's rows, fully fetched."""

    rows: list[tuple]
    columns: list[str]

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


@dataclass
class Atlas:
    """An open atlas: its root folder and a DuckDB connection.

    Use `open_atlas` / `init_atlas`, and `with atlas.transaction():` around every change.
    """

    root: Path
    connection: "object"

    def path(self, relative: str | os.PathLike) -> Path:
        return self.root / relative

    def sql(self, query: str, parameters: list | tuple | None = None) -> "Rows":
        """Run one statement and materialise its rows (DuckDB refuses new work while a result is open)."""
        cursor = self.connection.execute(query, parameters or [])
        description = cursor.description
        return Rows(cursor.fetchall() if description else [], [d[0] for d in description or []])

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.sql("SELECT value FROM atlas_meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.sql("INSERT OR REPLACE INTO atlas_meta VALUES (?, ?)", [key, value])

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Atlas"]:
        self.sql("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.sql("ROLLBACK")
            raise
        self.sql("COMMIT")

    def item_columns(self) -> list[str]:
        """Every column of `items`: the core ones first, then metadata columns in creation order."""
        rows = self.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'items' ORDER BY column_index").fetchall()
        return [r[0] for r in rows]

    def metadata_columns(self) -> list[str]:
        return [c for c in self.item_columns() if c not in CORE_ITEM_COLUMNS]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _connect(database: Path):
    import duckdb

    return duckdb.connect(str(database))


def init_atlas(root: str | os.PathLike) -> Atlas:
    """Create an empty atlas folder (refused if one already exists there)."""
    root = Path(root)
    database = root / DATABASE_NAME
    if database.exists():
        raise AtlasError(f"{root}: an atlas already exists here")
    if root.exists() and not root.is_dir():
        raise AtlasError(f"{root}: exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        raise AtlasError(f"{root}: folder is not empty and holds no atlas; choose an empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("features", "profiles", "models", "embeddings", "indexes"):
        (root / sub).mkdir(exist_ok=True)
    # Build the database under a temporary name so a half-made atlas is never mistaken for one.
    temporary = root / f".{DATABASE_NAME}.tmp-{os.getpid()}"
    connection = _connect(temporary)
    connection.execute(SCHEMA)
    connection.execute("INSERT INTO atlas_meta VALUES ('format_version', ?), ('created_at', ?), ('created_by', ?)",
                       [FORMAT_VERSION, utc_now().isoformat(), f"threads-search {__version__}"])
    connection.close()
    os.replace(temporary, database)
    return open_atlas(root)


def open_atlas(root: str | os.PathLike, read_only: bool = False) -> Atlas:
    """Open an existing atlas; a folder without `atlas.duckdb` is refused."""
    root = Path(root)
    database = root / DATABASE_NAME
    if not root.exists():
        raise AtlasError(f"{root}: no such atlas folder (create one with `threads-search init {root}`)")
    if not database.is_file():
        raise AtlasError(f"{root}: not an atlas (no {DATABASE_NAME}; create one with `threads-search init`)")
    import duckdb

    try:
        connection = duckdb.connect(str(database), read_only=read_only)
        version = connection.execute("SELECT value FROM atlas_meta WHERE key = 'format_version'").fetchone()
    except duckdb.Error as error:
        raise AtlasError(f"{database}: not a readable atlas database ({str(error).splitlines()[0]})") from None
    if not version or version[0] != FORMAT_VERSION:
        connection.close()
        raise AtlasError(f"{database}: atlas format {version[0] if version else '?'} is not supported (expected {FORMAT_VERSION})")
    return Atlas(root=root.resolve(), connection=connection)


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
    atlas.connection.register("incoming_items", incoming)
    try:
        atlas.sql("""UPDATE items SET vid = nextval('vid_sequence'), patient_id = coalesce(n.patient_id, items.patient_id),
                            sample_id = coalesce(n.sample_id, items.sample_id)
                     FROM incoming_items n WHERE items.modality = ? AND items.item_id = n.item_id""", [modality])
        atlas.sql("""INSERT INTO items (vid, modality, item_id, patient_id, sample_id)
                     SELECT nextval('vid_sequence'), ?, n.item_id, coalesce(n.patient_id, n.default_patient_id), n.sample_id
                     FROM incoming_items n
                     WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.modality = ? AND i.item_id = n.item_id)""",
                  [modality, modality])
    finally:
        atlas.connection.unregister("incoming_items")


def write_json_atomic(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(temporary, path)
