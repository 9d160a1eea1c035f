"""`info`: what an atlas holds, as one JSON-friendly dict (the CLI renders it)."""

from __future__ import annotations

from threads_search.atlas.store import Atlas, quote_identifier

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


def _column_summary(atlas: Atlas, column: str) -> dict:
    name = quote_identifier(column)
    n_levels = atlas.sql(f"SELECT count(DISTINCT {name}) FROM items").fetchone()[0]
    if n_levels > MAX_LEVELS_SHOWN:
        return {"distinct_values": n_levels}
    rows = atlas.sql(f"SELECT CAST({name} AS VARCHAR), modality, count(*) FROM items GROUP BY ALL ORDER BY 1 NULLS LAST, 2").fetchall()
    counts: dict[str, dict[str, int]] = {}
    for value, modality, count in rows:
        counts.setdefault("(missing)" if value is None else value, {})[modality] = count
    return {"distinct_values": n_levels, "counts": counts}


def atlas_info(atlas: Atlas) -> dict:
    """Counts by modality and metadata column, features, genes, models, embeddings and indexes."""
    by_modality = dict(atlas.sql("SELECT modality, count(*) FROM items GROUP BY modality ORDER BY modality").fetchall())
    slides = atlas.sql("""SELECT count(*), sum(n_patches), min(n_patches), max(n_patches),
                                 list(DISTINCT feature_dim), list(DISTINCT patch_encoder) FILTER (WHERE patch_encoder IS NOT NULL),
                                 list(DISTINCT dtype), count(*) FILTER (WHERE copied)
                          FROM slides""").fetchone()
    batches = atlas.sql("""SELECT modality, batch_id, n_samples, len(genes), scale, scale_reason, source
                           FROM profile_batches ORDER BY modality, ingested_at""").fetchall()
    models = atlas.sql("SELECT model_id, recipe, created_at FROM models ORDER BY created_at").fetchall()
    embeddings = atlas.sql("SELECT model_id, modality, sum(n_vectors) FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()
    indexes = atlas.sql("SELECT model_id, modality, kind, n_vectors, recall_at_10 FROM indexes ORDER BY ALL").fetchall()
    prototypes = atlas.sql("SELECT name, model_id, modality, label_column, count(*) FROM prototypes GROUP BY ALL ORDER BY name").fetchall()
    return {
        "atlas": str(atlas.root),
        "created_at": atlas.meta("created_at"),
        "items": {m: by_modality.get(m, 0) for m in ("slides", "expression", "mutations")},
        "patients": atlas.sql("SELECT count(DISTINCT patient_id) FROM items").fetchone()[0],
        "pairing": pairing_counts(atlas),
        "features": {
            "feature_dim": int(atlas.meta("feature_dim")) if atlas.meta("feature_dim") else None,
            "patch_encoder": atlas.meta("patch_encoder"),
            "dtypes": slides[6] or [],
            "patches_total": int(slides[1] or 0),
            "patches_per_slide": [slides[2], slides[3]] if slides[0] else None,
            "copied_into_atlas": slides[7],
        },
        "profiles": [{"modality": m, "batch": b, "samples": n, "genes": g, "scale": s, "scale_reason": r, "source": src}
                     for m, b, n, g, s, r, src in batches],
        "metadata": {column: _column_summary(atlas, column) for column in atlas.metadata_columns()},
        "models": [{"model_id": i, "recipe": r, "created_at": str(c)} for i, r, c in models],
        "embeddings": [{"model_id": i, "modality": m, "vectors": int(n)} for i, m, n in embeddings],
        "indexes": [{"model_id": i, "modality": m, "kind": k, "vectors": n, "recall_at_10": r} for i, m, k, n, r in indexes],
        "prototypes": [{"name": n, "model_id": i, "modality": m, "label": label, "classes": c} for n, i, m, label, c in prototypes],
    }
