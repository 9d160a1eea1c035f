"""`info`: what an atlas holds, as one JSON-friendly dict (the CLI renders it)."""

from __future__ import annotations

from threads_search.atlas.embeddings import embedding_summaries
from threads_search.atlas.index_shards import shard_summaries
from threads_search.atlas.indexes import index_summaries
from threads_search.atlas.items import column_summary
from threads_search.atlas.profiles import batch_summaries
from threads_search.atlas.prototype_store import prototype_summaries
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.slides import slide_summary
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import model_summaries

MAX_LEVELS_SHOWN = 20


def pairing_counts(atlas: Atlas) -> dict[str, int]:
    """Slides with an expression / mutation partner (same patient, or the slide's explicit sample_id)."""
    query = """
        SELECT
          count(*) FILTER (WHERE has_expression) AS with_expression,
          count(*) FILTER (WHERE has_mutations) AS with_mutations,
          count(*) FILTER (WHERE has_expression AND has_mutations) AS with_both
        FROM (
          SELECT s.item_id,
            EXISTS (SELECT 1 FROM items p WHERE p.modality = 'expression'
                    AND (p.item_id = s.sample_id OR (s.sample_id IS NULL AND p.patient_id = s.patient_id))) AS has_expression,
            EXISTS (SELECT 1 FROM items p WHERE p.modality = 'mutations'
                    AND (p.item_id = s.sample_id OR (s.sample_id IS NULL AND p.patient_id = s.patient_id))) AS has_mutations
          FROM items s WHERE s.modality = 'slides')
    """
    with_expression, with_mutations, with_both = atlas.sql(query).fetchone()
    return {"slides_with_expression": with_expression, "slides_with_mutations": with_mutations, "slides_with_both": with_both}


def atlas_info(atlas: Atlas) -> dict:
    """Counts by modality and metadata column, features, genes, models, embeddings and indexes."""
    by_modality = dict(atlas.sql("SELECT modality, count(*) FROM items GROUP BY modality ORDER BY modality").fetchall())
    slides = slide_summary(atlas)
    return {
        "atlas": str(atlas.root),
        "created_at": atlas.meta("created_at"),
        "items": {m: by_modality.get(m, 0) for m in MODALITIES},
        "patients": atlas.sql("SELECT count(DISTINCT patient_id) FROM items").fetchone()[0],
        "pairing": pairing_counts(atlas),
        "features": {
            "feature_dim": int(atlas.meta("feature_dim")) if atlas.meta("feature_dim") else None,
            "patch_encoder": atlas.meta("patch_encoder"),
            "dtypes": slides["dtypes"],
            "patches_total": slides["patches_total"],
            "patches_per_slide": slides["patches_per_slide"],
            "copied_into_atlas": slides["copied_into_atlas"],
            "slides_with_features": slides["slides"],  # the others are known by precomputed embeddings only
        },
        "profiles": batch_summaries(atlas),
        "metadata": {column: column_summary(atlas, column, MAX_LEVELS_SHOWN) for column in atlas.metadata_columns()},
        "models": [_model_entry(m) for m in model_summaries(atlas)],
        "embeddings": embedding_summaries(atlas),
        "indexes": index_summaries(atlas),
        "index_shards": shard_summaries(atlas),
        "prototypes": prototype_summaries(atlas),
    }


def _model_entry(summary: dict) -> dict:
    """A model's id, recipe and date (a precomputed set's encoder), plus the training config, selection and
    label it was trained with."""
    entry = {k: v for k, v in summary.items() if k != "provenance"}
    provenance = summary["provenance"]
    if summary["recipe"] == "precomputed":  # a precomputed set's --encoder
        entry["encoder"] = provenance.get("encoder")
    if "config" in provenance:
        entry["training"] = {"config": provenance["config"], "where": provenance.get("where"),
                             "label": provenance.get("label")}
    return entry
