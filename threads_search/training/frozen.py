"""`train --slide-encoder MODEL`: molecular encoders aligned to a frozen slide space.

The slide side is a model already in the atlas whose slide embeddings are stored (mean
pooling, a published checkpoint loaded with `embed --model feather --weights FILE`, a trained
model, precomputed embeddings): its vectors are read as they are and never change. Only the
expression / mutation MLPs (and the CLIP temperature) are trained, with the same symmetric
InfoNCE as the joint trainer, so a profile lands next to its patient's slides in that space.

Each step draws `batch_size` training patients; for each, one of its slides' frozen vectors and
one profile row per modality. After every epoch, held-out patients' profiles query their slides
(mAP@k, relevant = same label when given, else same patient); the best epoch is kept and
training stops after `patience` epochs without gain. Seeded: the same seed gives the same model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.items import patient_labels
from threads_search.atlas.slides import slide_items
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import load_atlas_model, model_recipe, resolve_model_id, store_model
from threads_search.atlas.where import check_where
from threads_search.errors import InputError, TrainingError
from threads_search.training.job import _profile_table
from threads_search.training.paired_data import PairedDataset, split_patients
from threads_search.training.threads import using_torch_threads
from threads_search.training.trainer import (
    EpochRecord, TrainingConfig, _fit_profile_branches, _optimizer, modality_losses, optimiser_step, resolve_device,
    retrieval_at_k)

PROFILE_OPTIONS = ("profile_hidden_dim", "profile_n_layers", "profile_dropout")


@dataclass
class AlignedTrainingResult:
    model: object  # threads_search.encoders.aligned.AlignedModel, best epoch, CPU, eval mode
    model_id: str
    slide_model_id: str
    history: list[EpochRecord]
    best_epoch: int  # 0 = the initial weights
    initial_val_map: float | None
    train_patients: list[str]
    val_patients: list[str]
    n_slides: int
    notes: list[str]


def frozen_slide_vectors(atlas: Atlas, slide_model_id: str, where_sql: str | None = None
                         ) -> tuple[dict[str, list[np.ndarray]], int, list[str]]:
    """patient_id -> its selected slides' stored (dim,) unit vectors; (that, n slides, notes)."""
    where = check_where(atlas, where_sql)
    records = slide_items(atlas, atlas.filter_vids(where, "slides") if where else None)
    if not records:
        raise TrainingError(f"no slides match --where {where.text!r}" if where else "the atlas holds no slides")
    vids, vectors = load_embeddings(atlas, slide_model_id, "slides", np.array([r.vid for r in records], np.int64))
    if not len(vids):
        raise TrainingError(f"model {slide_model_id} ({model_recipe(atlas, slide_model_id)}) has no slide embeddings "
                            f"for the selected slides; run `threads-search embed {atlas.root} --model {slide_model_id}` first")
    row_of = {int(v): i for i, v in enumerate(vids)}
    by_patient: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in records:
        if record.vid in row_of:
            by_patient[str(record.patient_id)].append(vectors[row_of[record.vid]])
    notes = []
    if len(vids) < len(records):
        notes.append(f"{len(records) - len(vids)} of the {len(records)} selected slides have no embedding from "
                     f"{slide_model_id}; trained without them")
    return dict(by_patient), len(vids), notes


def train_aligned_model(atlas: Atlas, slide_encoder: str, config: TrainingConfig | None = None,
                        where_sql: str | None = None, label_column: str | None = None,
                        on_epoch: Callable[[EpochRecord], None] | None = None) -> AlignedTrainingResult:
    """Train expression / mutation encoders into the frozen slide space of `slide_encoder` (a
    stored model id, prefix or recipe name) on the selected slides' patients; store and return it."""
    config = config or TrainingConfig()
    slide_model_id = resolve_model_id(atlas, slide_encoder)
    by_patient, n_slides, notes = frozen_slide_vectors(atlas, slide_model_id, where_sql)
    patients = set(by_patient)
    dataset = PairedDataset(slides=[], expression=_profile_table(atlas, "expression", patients),
                            mutations=_profile_table(atlas, "mutations", patients))
    if dataset.expression is None and dataset.mutations is None:
        raise TrainingError("no expression or mutation profile belongs to the selected slides' patients; nothing to align")
    labels = None
    if label_column:
        labels = {p: v for p, v in patient_labels(atlas, "slides", label_column).items() if p in patients}
    device = resolve_device(config.device)
    with using_torch_threads(config.threads), \
            torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        run = _AlignmentRun(load_atlas_model(atlas, slide_model_id), slide_model_id, by_patient, dataset, labels,
                            config, device)
        history, best_epoch, initial = run.fit(on_epoch)
    provenance = {"slide_encoder": slide_model_id, "slide_recipe": run.model.config.slide_recipe, "where": where_sql,
                  "label": label_column, "best_epoch": best_epoch, "initial_val_map": initial, "device": str(device),
                  "history": [vars(r) for r in history],
                  "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "model"}}
    model_id = store_model(atlas, run.model, provenance)
    return AlignedTrainingResult(run.model, model_id, slide_model_id, history, best_epoch, initial,
                                 run.train_patients, run.val_patients, n_slides, notes)


class _AlignmentRun:
    """One alignment run: frozen slide vectors on the device, the molecular encoders trained."""

    def __init__(self, slide_model, slide_model_id: str, by_patient: dict[str, list[np.ndarray]],
                 dataset: PairedDataset, labels, config: TrainingConfig, device: torch.device) -> None:
        from threads_search.encoders.aligned import AlignedModel

        config.check()
        if config.learning_rate is None:
            raise InputError("learning_rate 'auto' is for the joint trainer; with --slide-encoder give --learning-rate")
        self.config, self.device, self.labels = config, device, labels
        self.rng = np.random.default_rng(config.seed)
        with_profiles = {str(p) for table in dataset.profile_tables().values() for p in table.patient_ids}
        paired = sorted(set(by_patient) & with_profiles)
        self.train_patients, self.val_patients = split_patients(paired, config.val_fraction, config.seed)
        dim = int(next(iter(by_patient.values()))[0].shape[0])
        torch.manual_seed(config.seed)
        options = {k: v for k, v in dict(config.model).items() if k in PROFILE_OPTIONS}
        self.model = AlignedModel.on_slide_model(slide_model, slide_model_id, dim, **options)
        self.modalities = _fit_profile_branches(self.model, dataset, set(self.train_patients), config, device)
        self.model.to(device)
        # Each patient's slides as rows of one device matrix (unit vectors, exactly as stored).
        order = sorted(by_patient)
        self.slide_rows: dict[str, list[int]] = {}
        rows = []
        for patient in order:
            self.slide_rows[patient] = list(range(len(rows), len(rows) + len(by_patient[patient])))
            rows.extend(by_patient[patient])
        self.slides = torch.from_numpy(np.stack(rows).astype(np.float32)).to(device)
        self.slide_owner = [patient for patient in order for _ in by_patient[patient]]
        steps = max(1, len(self.train_patients) // config.batch_size + (len(self.train_patients) % config.batch_size >= 2))
        self.optimizer, self.scheduler = _optimizer(self.model, config, config.epochs * steps)

    def _pick(self, options):
        return options[self.rng.integers(len(options))]

    def step(self, patients: list[str]) -> float | None:
        slides = self.slides[[self._pick(self.slide_rows[p]) for p in patients]]
        losses = modality_losses(self.modalities, patients, slides, self.model.logit_scale.exp(), self._pick)
        loss = optimiser_step(self.model, self.optimizer, self.scheduler, self.config, losses)
        if loss is not None and not math.isfinite(loss):
            raise TrainingError("the alignment loss became NaN / Inf; try a lower learning rate")
        return loss

    def _key(self, patient: str) -> str:
        return str(patient) if self.labels is None else str(self.labels.get(patient, f"<unlabelled {patient}>"))

    @torch.no_grad()
    def validate(self) -> tuple[float, float] | None:
        """(mAP@k, Acc@k) of held-out profiles -> held-out slides' frozen vectors, mean over modalities."""
        if not self.val_patients:
            return None
        self.model.eval()
        rows = [row for p in self.val_patients for row in self.slide_rows[p]]
        database = self.slides[rows].cpu().numpy()
        database_keys = np.array([self._key(self.slide_owner[row]) for row in rows])
        results = []
        for modality in self.modalities:
            queries = [(p, row) for p in self.val_patients for row in modality.rows_by_patient.get(p, [])]
            if not queries:
                continue
            vectors = F.normalize(modality.encoder(modality.profiles[[row for _, row in queries]]).float(), dim=-1)
            keys = np.array([self._key(p) for p, _ in queries])
            results.append(retrieval_at_k(vectors.cpu().numpy() @ database.T, keys[:, None] == database_keys[None, :],
                                          self.config.eval_k))
        self.model.train()
        return tuple(float(v) for v in np.mean(results, axis=0)) if results else None

    def fit(self, on_epoch) -> tuple[list[EpochRecord], int, float | None]:
        initial = self.validate()
        best_map = initial[0] if initial else -math.inf
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        best_epoch, stale, history = 0, 0, []
        self.model.train()
        for epoch in range(1, self.config.epochs + 1):
            started = time.perf_counter()
            order = [self.train_patients[i] for i in self.rng.permutation(len(self.train_patients))]
            batches = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
            losses = [loss for batch in batches if len(batch) >= 2 for loss in [self.step(batch)] if loss is not None]
            metrics = self.validate()
            record = EpochRecord(epoch, float(np.mean(losses)) if losses else float("nan"),
                                 metrics[0] if metrics else None, metrics[1] if metrics else None,
                                 self.scheduler.get_last_lr()[0], float(torch.exp(-self.model.logit_scale).item()),
                                 time.perf_counter() - started)
            history.append(record)
            if on_epoch:
                on_epoch(record)
            if metrics is None or metrics[0] > best_map:
                best_map = metrics[0] if metrics else best_map
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                best_epoch, stale = epoch, 0
            else:
                stale += 1
                if stale >= self.config.patience:
                    break
        self.model.load_state_dict(best_state)
        self.model.to("cpu").eval()
        return history, best_epoch, initial[0] if initial else None
