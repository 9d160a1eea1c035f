"""Stored prototype sets: one row per (set name, class) in `prototypes`, with its unit vector."""

from __future__ import annotations

import numpy as np

from threads_search.atlas.store import Atlas


def replace_prototypes(atlas: Atlas, name: str, model_id: str, modality: str, label_column: str,
                       classes: list[str], members: list[int], vectors: np.ndarray) -> None:
    """Store a prototype set under `name`, replacing any set of that name, in one transaction."""
    with atlas.transaction():
        atlas.sql("DELETE FROM prototypes WHERE name = ?", [name])
        for label, count, vector in zip(classes, members, vectors):
            atlas.sql("INSERT INTO prototypes VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [name, label, model_id, modality, label_column, int(count), np.asarray(vector, np.float32).tolist()])


def prototype_rows(atlas: Atlas, name: str) -> list[tuple]:
    """(class_label, model_id, modality, label_column, n_members, vector) of one set, by class."""
    return atlas.sql("SELECT class_label, model_id, modality, label_column, n_members, vector FROM prototypes "
                     "WHERE name = ? ORDER BY class_label", [name]).fetchall()


def prototype_set_names(atlas: Atlas) -> list[str]:
    return [r[0] for r in atlas.sql("SELECT DISTINCT name FROM prototypes ORDER BY 1").fetchall()]


def prototype_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT name, model_id, modality, label_column, count(*) FROM prototypes GROUP BY ALL ORDER BY name").fetchall()
    return [{"name": n, "model_id": i, "modality": m, "label": label, "classes": c} for n, i, m, label, c in rows]
