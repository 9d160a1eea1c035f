"""`train`: atlas slides + their patients' profiles -> a trained model stored in the atlas.

Also fits the untrained mean-pooling baseline on the same training selection, so that every
later comparison has its reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from threads_search.atlas.items import patient_by_item, patient_labels
from threads_search.atlas.profiles import load_profiles
from threads_search.atlas.slides import AtlasSlide, load_slide_bag, slide_records
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import store_model, store_models
from threads_search.atlas.where import check_where
from threads_search.errors import AtlasError, TrainingError

# Bags are held in memory for training when they fit in this many bytes (float32), else read per step.
IN_MEMORY_BAG_BYTES = 4 << 30


@dataclass
class TrainJobResult:
    model_id: str
    baseline_id: str
    training: object  # threads_search.training.trainer.TrainingResult
    n_slides: int
    n_patients: int


def _profile_table(atlas: Atlas, modality: str, patients: set[str]):
    """One PairedProfiles over the genes shared by every ingest batch of the modality, or None."""
    from threads_search.training.paired_data import PairedProfiles

    matrices = load_profiles(atlas, modality)
    if not matrices:
        return None
    patient_of = patient_by_item(atlas, modality)
    genes = list(matrices[0].genes)
    for matrix in matrices[1:]:
        shared = set(matrix.genes)
        genes = [g for g in genes if g in shared]
    if not genes:
        raise TrainingError(f"{modality}: the ingested batches share no gene; train on one batch with --where")
    rows, owners = [], []
    for matrix in matrices:
        column = {g: i for i, g in enumerate(matrix.genes)}
        take = np.array([column[g] for g in genes])
        for row, sample in enumerate(matrix.sample_ids):
            if patient_of.get(sample) in patients:
                rows.append(matrix.values[row, take])
                owners.append(patient_of[sample])
    if not rows:
        return None
    scales = {m.scale for m in matrices}
    scale = matrices[0].scale if len(scales) == 1 else "log"
    return PairedProfiles(patient_ids=owners, matrix=np.stack(rows), genes=genes, scale=scale or "log")


def _slide_sources(slides: list[AtlasSlide], feature_dim: int):
    from threads_search.training.paired_data import SlideRecord

    in_memory = sum(s.n_patches for s in slides) * feature_dim * 4 <= IN_MEMORY_BAG_BYTES
    return [SlideRecord(slide_id=s.slide_id, patient_id=s.patient_id,
                        bag=load_slide_bag(s) if in_memory else (lambda s=s: load_slide_bag(s)))
            for s in slides]


def default_recipe(device: str) -> str:
    """The full THREADS-sized recipe where a GPU trains it, the CPU-sized one elsewhere."""
    if device == "cuda":
        return "threads-abmil"
    if device == "auto":
        import torch

        return "threads-abmil" if torch.cuda.is_available() else "threads-abmil-cpu"
    return "threads-abmil-cpu"


def paired_dataset(atlas: Atlas, where_sql: str | None = None, label_column: str | None = None,
                   group_column: str | None = None):
    """The training selection: slides matching `where`, paired with all profiles of their patients
    (`label_column`: validation relevance; `group_column`: the batch groups, config.batch_by)."""
    from threads_search.training.paired_data import PairedDataset

    where = check_where(atlas, where_sql)
    slides = slide_records(atlas, atlas.filter_vids(where, "slides") if where else None)
    if not slides:
        raise TrainingError(f"no slides match --where {where.text!r}" if where else "the atlas holds no slides")
    patients = {s.patient_id for s in slides}
    labels = None
    if label_column:
        labels = {p: v for p, v in patient_labels(atlas, "slides", label_column).items() if p in patients}
    groups = None
    if group_column:
        groups = {p: v for p, v in patient_labels(atlas, "slides", group_column).items() if p in patients}
    feature_dim = int(atlas.meta("feature_dim"))
    return PairedDataset(slides=_slide_sources(slides, feature_dim),
                         expression=_profile_table(atlas, "expression", patients),
                         mutations=_profile_table(atlas, "mutations", patients), labels=labels, groups=groups)


def train_atlas_model(atlas: Atlas, config=None, where_sql: str | None = None, label_column: str | None = None,
                      on_step: Callable | None = None, on_epoch: Callable | None = None) -> TrainJobResult:
    """Train on the selection, store the best model and a fitted mean-pooling baseline in the atlas."""
    from threads_search.training.trainer import TrainingConfig, TrainingDiverged, train_model

    config = config or TrainingConfig()
    if not atlas.meta("feature_dim"):
        raise AtlasError(f"{atlas.root}: no slides ingested; run `threads-search ingest slides` first")
    dataset = paired_dataset(atlas, where_sql, label_column, config.batch_by)
    if dataset.expression is None and dataset.mutations is None:
        raise TrainingError("no expression or mutation profile belongs to the selected slides' patients; nothing to pair")
    model_overrides = {"in_dim": int(atlas.meta("feature_dim")), "patch_encoder": atlas.meta("patch_encoder") or ""}
    requested, config = config, _with_model_overrides(config, model_overrides)
    try:
        result = train_model(dataset, config, on_step=on_step, on_epoch=on_epoch)
    except TrainingDiverged as diverged:
        store_model(atlas, diverged.result.model, {"where": where_sql, "note": "last good state before NaN loss"})
        raise
    provenance = {"where": where_sql, "label": label_column, "best_epoch": result.best_epoch,
                  "initial_val_map": result.initial_val_map, "device": result.device,
                  "history": [vars(r) for r in result.history], "config": _config_dict(requested),
                  "learning_rate_sweep": {str(k): v for k, v in result.learning_rate_sweep.items()},
                  "chosen_learning_rate": result.chosen_learning_rate,
                  "decayed_from_epoch": result.decayed_from_epoch, "schedule_choice": result.schedule_choice}
    model_id, baseline_id = store_models(atlas, [(result.model, provenance),
                                                 (_fitted_baseline(dataset, config), {"where": where_sql, "baseline": True})])
    return TrainJobResult(model_id=model_id, baseline_id=baseline_id, training=result,
                          n_slides=len(dataset.slides), n_patients=len({s.patient_id for s in dataset.slides}))


def _with_model_overrides(config, overrides: dict):
    """The atlas decides the input dimension and patch encoder; explicit model options win otherwise."""
    import dataclasses

    return dataclasses.replace(config, model={**dict(config.model), **overrides})


def _config_dict(config) -> dict:
    """The config as the caller gave it (the atlas's in_dim and patch encoder are in the model's own
    config.json), so that `info` shows a file `train --config` reads back to the same config."""
    import dataclasses

    return {k: (dict(v) if isinstance(v, dict) or hasattr(v, "items") else v) for k, v in dataclasses.asdict(config).items()}


def _fitted_baseline(dataset, config):
    from threads_search.encoders.registry import create_model

    in_dim = int(config.model.get("in_dim"))
    baseline = create_model("meanpool", in_dim=in_dim, patch_encoder=config.model.get("patch_encoder", ""))
    if dataset.expression is not None:
        baseline.fit_expression(dataset.expression.matrix, dataset.expression.genes, dataset.expression.scale)
    if dataset.mutations is not None:
        baseline.fit_mutations(dataset.mutations.matrix, dataset.mutations.genes)
    return baseline
