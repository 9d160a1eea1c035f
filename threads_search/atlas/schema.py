"""The atlas schema, its version, and the migrations that bring older atlases up to it.

`FORMAT_VERSION` is the layout of the folder and the tables. A writing command opens an older
atlas and runs the migrations in `MIGRATIONS` in one transaction; a reader refuses a newer one.
"""

from __future__ import annotations

from collections.abc import Callable

FORMAT_VERSION = 4
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
    ingested_at TIMESTAMP NOT NULL
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



def _add_checksums_and_ranges(connection) -> None:
    """2: content checksums of the atlas's own files, recorded at write and verified by `check`;
    the vid range of each embedding part, so one stored vector is read from one part; the
    raw slide and thumbnail of each slide."""
    for table in ("embeddings", "indexes", "profile_batches"):
        connection.execute(f"ALTER TABLE {table} ADD COLUMN checksum VARCHAR")
    connection.execute("ALTER TABLE embeddings ADD COLUMN min_vid BIGINT")
    connection.execute("ALTER TABLE embeddings ADD COLUMN max_vid BIGINT")
    # Where a slide's pictures are (raw WSI, thumbnail), for the service; see atlas/slide_images.py.
    for column, kind in (("wsi_path", "VARCHAR"), ("thumbnail_path", "VARCHAR"), ("thumbnail_downsample", "DOUBLE")):
        connection.execute(f"ALTER TABLE slides ADD COLUMN {column} {kind}")


def _add_patch_indexes(connection) -> None:
    """3: the patch index of region search (one per atlas; its files are named per build)."""
    connection.execute("""
        CREATE TABLE patch_indexes (
            name VARCHAR PRIMARY KEY,        -- 'patches'
            path VARCHAR NOT NULL,           -- relative to the atlas, without extension
            patch_encoder VARCHAR,
            dimension INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            n_vectors BIGINT NOT NULL,
            n_slides INTEGER NOT NULL,
            mosaic_fraction DOUBLE,          -- NULL: every patch indexed
            recall_at_10 DOUBLE,
            built_at TIMESTAMP NOT NULL
        )""")


def _add_index_shards(connection) -> None:
    """4: sharded slide-level indexes (`index --shards N`): one row per shard of (model, modality);
    shard `s` holds the items whose vid hashes to `s` (indexer/shards.py)."""
    connection.execute("""
        CREATE TABLE index_shards (
            model_id VARCHAR NOT NULL,
            modality VARCHAR NOT NULL,
            shard INTEGER NOT NULL,
            n_shards INTEGER NOT NULL,
            path VARCHAR,                    -- relative to the atlas, without extension; NULL: an empty shard
            kind VARCHAR,
            n_vectors BIGINT NOT NULL,
            recall_at_10 DOUBLE,
            built_at TIMESTAMP NOT NULL,
            checksum VARCHAR,
            PRIMARY KEY (model_id, modality, shard)
        )""")


# version -> the change that turns an atlas of that version into one of version + 1. A new
# atlas is made with SCHEMA (version 1) and then every migration, so both paths give one layout.
MIGRATIONS: dict[int, Callable[[object], None]] = {1: _add_checksums_and_ranges, 2: _add_patch_indexes, 3: _add_index_shards}


def migrate(connection, version: int) -> int:
    """Run the migrations from `version` up to FORMAT_VERSION on `connection` (inside a transaction)."""
    while version < FORMAT_VERSION:
        MIGRATIONS[version](connection)
        version += 1
        connection.execute("INSERT OR REPLACE INTO atlas_meta VALUES ('format_version', ?)", [str(version)])
    return version
