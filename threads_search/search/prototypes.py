"""Molecular prompting: class prototypes are means of normalised embeddings; a slide is
classified zero-shot by its nearest prototype (cosine)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.items import item_table, require_metadata_column
from threads_search.atlas.prototype_store import prototype_rows, prototype_set_names, replace_prototypes
from threads_search.atlas.store import Atlas
from threads_search.atlas.where import Where, matching_vids
from threads_search.errors import InputError


@dataclass
class PrototypeSet:
    name: str
    model_id: str
    modality: str
    label_column: str
    classes: list[str]
    members: list[int]
    vectors: np.ndarray  # (n_classes, dim) float32, L2-normalised


def _labels_by_vid(atlas: Atlas, modality: str, label_column: str, where_sql: str | Where | None) -> dict[int, str]:
    require_metadata_column(atlas, label_column)
    selected = item_table(atlas, modality, matching_vids(atlas, modality, where_sql), [label_column])
    return {int(v): label for v, label in zip(selected.vids, selected.values[label_column]) if label is not None}


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_prototypes(atlas: Atlas, model_id: str, label_column: str, modality: str = "expression",
                     where_sql: str | None = None, name: str | None = None) -> PrototypeSet:
    """Average the normalised embeddings of each class and store the set under `name`."""
    labels = _labels_by_vid(atlas, modality, label_column, where_sql)
    ids, vectors = load_embeddings(atlas, model_id, modality, list(labels))
    if ids.size == 0:
        raise InputError(f"no embedded {modality} item with a '{label_column}' label matches the selection "
                         f"(model {model_id}; run `threads-search embed` first?)")
    classes = sorted({labels[int(i)] for i in ids})
    vectors = _normalise(vectors)
    class_of = np.array([labels[int(i)] for i in ids])
    means = np.stack([vectors[class_of == c].mean(axis=0) for c in classes])
    members = [int((class_of == c).sum()) for c in classes]
    prototype_set = PrototypeSet(name or f"{label_column}-{modality}", model_id, modality, label_column, classes, members, _normalise(means))
    replace_prototypes(atlas, prototype_set.name, model_id, modality, label_column, classes, members, prototype_set.vectors)
    return prototype_set


def load_prototypes(atlas: Atlas, name: str) -> PrototypeSet:
    rows = prototype_rows(atlas, name)
    if not rows:
        known = prototype_set_names(atlas)
        raise InputError(f"no prototype set '{name}' (known: {', '.join(known) or 'none; create one with `threads-search prototypes`'})")
    return PrototypeSet(name, rows[0][1], rows[0][2], rows[0][3], [r[0] for r in rows], [r[4] for r in rows],
                        np.array([r[5] for r in rows], np.float32))


def prototype_vector(atlas: Atlas, name: str, label: str, model_id: str) -> np.ndarray:
    prototype_set = load_prototypes(atlas, name)
    _check_model(prototype_set, model_id)
    if label not in prototype_set.classes:
        raise InputError(f"prototype set '{name}' has no class '{label}' (classes: {', '.join(prototype_set.classes)})")
    return prototype_set.vectors[prototype_set.classes.index(label)]


def _check_model(prototype_set: PrototypeSet, model_id: str) -> None:
    if prototype_set.model_id != model_id:
        from threads_search.errors import ModelMismatchError

        raise ModelMismatchError(f"prototype set '{prototype_set.name}' was built with model {prototype_set.model_id}, "
                                 f"not {model_id}; rebuild it with `threads-search prototypes`")


@dataclass
class Classification:
    slide_ids: list[str]
    patient_ids: list[str]
    predicted: list[str]
    scores: np.ndarray  # (n_slides, n_classes) cosine similarity to each prototype
    classes: list[str]
    truth: list[str | None]  # the slides' own value of the label column, when present

    def balanced_accuracy(self) -> float | None:
        known = [(t, p) for t, p in zip(self.truth, self.predicted) if t is not None]
        if not known:
            return None
        per_class = [np.mean([p == t for t, p in known if t == c]) for c in sorted({t for t, _ in known})]
        return float(np.mean(per_class))


def classify_slides(atlas: Atlas, name: str, where_sql: str | None = None, model_id: str | None = None) -> Classification:
    """Assign each selected, embedded slide to its nearest prototype of the set."""
    prototype_set = load_prototypes(atlas, name)
    model_id = model_id or prototype_set.model_id
    _check_model(prototype_set, model_id)
    label = prototype_set.label_column
    selected = item_table(atlas, "slides", matching_vids(atlas, "slides", where_sql), [label])
    if not len(selected):
        raise InputError(f"--where \"{where_sql}\" matches no slides" if where_sql else "the atlas holds no slides")
    ids, vectors = load_embeddings(atlas, model_id, "slides", selected.vids)
    if ids.size == 0:
        raise InputError(f"none of the selected slides is embedded with model {model_id}; run `threads-search embed`")
    row_of = {int(v): row for row, v in enumerate(selected.vids)}
    scores = _normalise(vectors) @ prototype_set.vectors.T
    chosen = [row_of[int(i)] for i in ids]
    return Classification(slide_ids=[selected.item_ids[r] for r in chosen], patient_ids=[selected.patient_ids[r] for r in chosen],
                          predicted=[prototype_set.classes[j] for j in scores.argmax(axis=1)], scores=scores,
                          classes=prototype_set.classes, truth=[selected.values[label][r] for r in chosen])
