"""Contrastive trainer (SPEC §6): slide encoder x molecular encoders, symmetric InfoNCE.

Each step draws `batch_size` training patients; for each, one of its slides (up to
`patches_per_slide` patches sampled without replacement, padded batch + mask) and one of
its profile rows per modality. Slide and profile embeddings are L2-normalised and compared
with a learnable temperature (CLIP logit scale, clamped to `max_logit_scale`); the loss is
the symmetric cross-entropy, summed over the modalities a patient has (expression and
mutations). One epoch = one pass over the training patients, so two slides of one patient
never meet as false negatives in a batch.

Model selection: after every epoch the held-out patients' profiles query their slides
(expression -> slide and mutations -> slide) and mAP@k is measured (relevant = same label
when labels are given, else same patient); the best epoch's weights are kept and training
stops after `patience` epochs without improvement. Seeded: on CPU the same seed gives
bit-identical weights.

Schedules (config.schedule): 'cosine' decays over the planned epochs; 'wsd' holds the peak
rate until validation stalls, then decays the best epoch's weights to 0; 'auto' (the default)
trains a short and a long cosine run and keeps the long one only when validation says it is
better beyond noise (training/schedule_choice.py). `batch_by` draws each step's patients from
one metadata group (site), so the site cannot tell a positive pair from its negatives.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from threads_search.encoders.molecular import ExpressionNormaliser, MutationPanel
from threads_search.encoders.registry import create_model
from threads_search.errors import DeviceError, InputError, TrainingError
from threads_search.training.config import TrainingConfig  # noqa: F401  (re-exported: callers import it from here)
from threads_search.training.paired_data import PairedDataset, SlideRecord, pack_bags, sample_bag, split_patients
from threads_search.training.threads import using_torch_threads


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_map: float | None  # mAP@k, mean over query modalities; None without a validation split
    val_acc: float | None  # Acc@k: a relevant slide among the top k
    learning_rate: float
    temperature: float  # 1 / logit scale
    seconds: float  # wall time of the epoch, validation included


@dataclass(frozen=True)
class StepProgress:
    epoch: int
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    loss: float


@dataclass
class TrainingResult:
    model: Any  # the best ThreadsModel, on CPU, eval mode
    history: list[EpochRecord]
    best_epoch: int  # 0 = the initial weights
    initial_val_map: float | None
    train_patients: list[str]
    val_patients: list[str]
    device: str
    stopped_early: bool = False
    val_modalities: list[str] = field(default_factory=list)  # the profile modalities that queried the validation slides
    learning_rate_sweep: dict[float, float | None] = field(default_factory=dict)  # learning_rate 'auto': score per rate
    chosen_learning_rate: float | None = None  # learning_rate 'auto': the rate the sweep picked
    decayed_from_epoch: int | None = None  # schedule 'wsd': the stable phase's best epoch the decay started from
    # The kept epoch's validation, query by query: (AP@k, weight in the figure); None without validation.
    val_queries: tuple[np.ndarray, np.ndarray] | None = None
    schedule_choice: dict | None = None  # schedule 'auto': the candidates' validation figures and the choice


class TrainingDiverged(TrainingError):
    """The loss became NaN / Inf; `result` holds the last good state."""

    def __init__(self, message: str, result: TrainingResult) -> None:
        super().__init__(message)
        self.result = result


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda' without a GPU -> DeviceError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"device must be auto, cpu or cuda, got '{name}'")


def clip_loss(slide_embeddings: torch.Tensor, profile_embeddings: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between row-paired (B, d) unit vectors; row i of each is a positive pair."""
    logits = logit_scale * slide_embeddings @ profile_embeddings.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def retrieval_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[float, float]:
    """(mAP@k, Acc@k) of a (n_queries, n_database) score matrix, higher = closer.

    mAP@k = mean_q sum_{j<=k} P@j rel_j / k (Patho-Bench), k capped at n_database;
    Acc@k = fraction of queries with a relevant item in their top k. Ties keep database order.
    """
    average_precision, found = retrieval_per_query(scores, relevant, k)
    return float(average_precision.mean()), float(found.mean())


def retrieval_per_query(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (AP@k, whether a relevant item is in the top k) as float64 arrays; see retrieval_at_k."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(relevant, top, axis=1).astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (precision * hits).sum(axis=1) / k, hits.any(axis=1).astype(np.float64)


@dataclass
class _Modality:
    name: str
    encoder: nn.Module
    profiles: torch.Tensor  # (n_rows, n_genes) float32 on the device, normalised
    rows_by_patient: dict[str, list[int]]


def _fit_profile_branches(model: Any, dataset: PairedDataset, train: set[str], config: TrainingConfig,
                          device: torch.device) -> list[_Modality]:
    """Fit normaliser / gene panel on the training patients only, attach the encoders, and
    prepare every profile row (train and validation) as a device tensor."""
    modalities = []
    for name, table in dataset.profile_tables().items():
        train_rows = [i for i, p in enumerate(table.patient_ids) if str(p) in train]
        if len(train_rows) < 2:
            raise TrainingError(f"{name}: only {len(train_rows)} profile row(s) among the training patients, need 2")
        matrix = np.asarray(table.matrix)
        if name == "expression":
            model.attach_expression(ExpressionNormaliser.fit(matrix[train_rows], table.genes, table.scale, config.n_top_genes))
            profiles, _ = model.expression_normaliser.transform(matrix, table.genes)
            encoder = model.expression_encoder
        else:
            model.attach_mutations(MutationPanel.fit(matrix[train_rows], table.genes, config.max_mutation_genes))
            profiles, _ = model.mutation_panel.transform(matrix, table.genes)
            encoder = model.mutation_encoder
        modalities.append(_Modality(name, encoder, torch.from_numpy(profiles).to(device), table.rows_by_patient()))
    return modalities


def _optimizer(model: nn.Module, config: TrainingConfig, total_steps: int, hold: bool = False
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases, norms and the temperature) + linear warm-up, then cosine decay
    over `total_steps`, or with `hold` the peak rate held (schedule 'wsd', see `start_decay`)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
    warmup = max(1, round(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if hold:
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def modality_losses(modalities: Sequence[_Modality], patients: Sequence[str], slide_embeddings: torch.Tensor,
                    logit_scale: torch.Tensor, pick: Callable[[Sequence[Any]], Any]) -> list[torch.Tensor]:
    """One CLIP loss per modality between the batch's (B, d) unit slide embeddings and one
    profile row (chosen by `pick`) of each patient that has one; modalities with < 2 members skip."""
    losses = []
    for modality in modalities:
        members = [i for i, p in enumerate(patients) if p in modality.rows_by_patient]
        if len(members) < 2:
            continue
        rows = [pick(modality.rows_by_patient[patients[i]]) for i in members]
        profile_embeddings = F.normalize(modality.encoder(modality.profiles[rows]).float(), dim=-1)
        losses.append(clip_loss(slide_embeddings[members], profile_embeddings, logit_scale))
    return losses


def optimiser_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, config: TrainingConfig,
                   losses: list[torch.Tensor]) -> float | None:
    """Sum the modalities' losses and take one clipped AdamW step (temperature clamped); returns
    the loss, None when nothing was contrasted, NaN (and no step) when it is not finite."""
    if not losses:
        return None
    loss = torch.stack(losses).sum()
    if not torch.isfinite(loss):
        return float("nan")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip_norm:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(config.max_logit_scale))
    return float(loss.detach())


class _ContrastiveRun:
    """One training run; its methods are the steps of `train_model`."""

    def __init__(self, dataset: PairedDataset, config: TrainingConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.rng = np.random.default_rng(config.seed)
        self.slides_by_patient = dataset.slides_by_patient()
        self.train_patients, self.val_patients = split_patients(dataset.paired_patients(), config.val_fraction, config.seed)
        self.labels = dataset.labels
        self.groups = dataset.groups if config.batch_by else None
        self.last_val_queries: tuple[np.ndarray, np.ndarray] | None = None
        in_dim = sample_bag(self.slides_by_patient[self.train_patients[0]][0], 1, np.random.default_rng(0)).shape[1]
        torch.manual_seed(config.seed)
        self.model = create_model(config.recipe, **{"in_dim": in_dim, **config.model})
        self.modalities = _fit_profile_branches(self.model, dataset, set(self.train_patients), config, self.device)
        self.model.to(self.device)
        steps_per_epoch = max(1, len(plan_batches(self.train_patients, config.batch_size, self.groups)))
        self.steps_per_epoch = steps_per_epoch
        self.optimizer, self.scheduler = _optimizer(self.model, config, config.epochs * steps_per_epoch,
                                                    hold=config.schedule == "wsd")
        # Host buffer for packed patches, reused every step (on CPU the model reads it in place).
        self._patch_buffer = np.empty((0, in_dim), dtype=np.float32)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def _slide_batch(self, records: Sequence[SlideRecord], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        bags = [sample_bag(r, self.config.patches_per_slide, rng) for r in records]
        total = sum(bag.shape[0] for bag in bags)
        if self._patch_buffer.shape[0] < total:
            self._patch_buffer = np.empty((int(total * 1.25), self.model.in_dim), dtype=np.float32)
        patches, sizes = pack_bags(bags, [r.slide_id for r in records], self.model.in_dim, self._patch_buffer)
        return torch.from_numpy(patches).to(self.device), torch.from_numpy(sizes).to(self.device)

    def step(self, patients: Sequence[str]) -> float | None:
        """One optimiser step on a batch of patients; returns the loss (None: nothing to contrast)."""
        records = [self._pick(self.slides_by_patient[p]) for p in patients]
        patches, sizes = self._slide_batch(records, self.rng)
        with self.autocast():
            slide_embeddings = F.normalize(self.model.slide_encoder.forward_packed(patches, sizes).float(), dim=-1)
            losses = modality_losses(self.modalities, patients, slide_embeddings, self.model.logit_scale.exp(), self._pick)
        return optimiser_step(self.model, self.optimizer, self.scheduler, self.config, losses)

    def _pick(self, options: Sequence[Any]) -> Any:
        """One of a patient's slides / profile rows, at random."""
        return options[self.rng.integers(len(options))]

    @torch.no_grad()
    def validate(self) -> tuple[float, float] | None:
        """(mAP@k, Acc@k) of held-out profile -> slide retrieval, mean over modalities."""
        if not self.val_patients:
            return None
        self.model.eval()
        # The same patches every epoch, so epochs are compared on identical inputs.
        rng = np.random.default_rng(self.config.seed + 1)
        records = [r for p in self.val_patients for r in self.slides_by_patient[p]]
        chunks = []
        for start in range(0, len(records), self.config.batch_size):
            patches, sizes = self._slide_batch(records[start:start + self.config.batch_size], rng)
            with self.autocast():
                chunks.append(F.normalize(self.model.slide_encoder.forward_packed(patches, sizes).float(), dim=-1).cpu())
        slide_embeddings = torch.cat(chunks).numpy()
        slide_keys = np.array([self._relevance_key(r.patient_id) for r in records])
        results = []
        for modality in self.modalities:
            query_patients = [p for p in self.val_patients if p in modality.rows_by_patient]
            rows = [row for p in query_patients for row in modality.rows_by_patient[p]]
            if not rows:
                continue
            query_keys = np.array([self._relevance_key(p) for p in query_patients for _ in modality.rows_by_patient[p]])
            with self.autocast():
                queries = F.normalize(modality.encoder(modality.profiles[rows]).float(), dim=-1).cpu().numpy()
            results.append(retrieval_per_query(queries @ slide_embeddings.T, query_keys[:, None] == slide_keys[None, :],
                                               self.config.eval_k))
        self.model.train()
        if not results:
            return None
        # The figure is the mean over modalities of each one's mean; each query's weight in it is kept
        # so that two runs on the same split can be compared query by query (schedule 'auto').
        self.last_val_queries = (np.concatenate([ap for ap, _ in results]),
                                 np.concatenate([np.full(len(ap), 1 / (len(ap) * len(results))) for ap, _ in results]))
        return float(np.mean([ap.mean() for ap, _ in results])), float(np.mean([hit.mean() for _, hit in results]))

    def validated_modalities(self) -> list[str]:
        return [m.name for m in self.modalities if any(p in m.rows_by_patient for p in self.val_patients)]

    def _relevance_key(self, patient_id: str) -> str:
        if self.labels is None:
            return str(patient_id)
        return str(self.labels.get(str(patient_id), f"<unlabelled {patient_id}>"))

    def state(self) -> dict[str, Any]:
        """The weights (and for 'wsd', where training resumes from the best epoch, the optimiser's state)."""
        weights = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
        if self.config.schedule != "wsd":
            return {"model": weights}
        return {"model": weights, "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def start_decay(self, steps: int) -> None:
        """From here the rate falls linearly from the peak to 0 over `steps` optimiser steps."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: max(0.0, 1.0 - step / steps))

    def batches(self) -> list[list[str]]:
        """This epoch's patient batches, in a new random order."""
        order = [self.train_patients[i] for i in self.rng.permutation(len(self.train_patients))]
        batches = plan_batches(order, self.config.batch_size, self.groups)
        return batches if self.groups is None else [batches[i] for i in self.rng.permutation(len(batches))]


def plan_batches(order: Sequence[str], size: int, groups: Mapping[str, str] | None = None) -> list[list[str]]:
    """Consecutive batches of `size` patients of `order`; a last batch of 1 is dropped (nothing to contrast).

    With `groups` (patient -> group, e.g. site), each batch is drawn from one group, in batches of
    equal size, at most `size` (70 patients at 32 per step: 3 batches of 23-24, not 32, 32, 6); patients without a
    group, and a group of one, share mixed batches.
    """
    if groups is None:
        batches = [list(order[i:i + size]) for i in range(0, len(order), size)]
        return [b for b in batches if len(b) >= 2]
    by_group: dict[str, list[str]] = {}
    for patient in order:
        by_group.setdefault(groups.get(patient, ""), []).append(patient)
    rest = by_group.pop("", [])
    batches = []
    for members in by_group.values():
        if len(members) < 2:
            rest += members
            continue
        count = math.ceil(len(members) / size)
        bounds = np.linspace(0, len(members), count + 1).round().astype(int)
        batches += [members[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    batches += [rest[i:i + size] for i in range(0, len(rest), size)]
    return [b for b in batches if len(b) >= 2]


def train_model(dataset: PairedDataset, config: TrainingConfig = TrainingConfig(),
                on_step: Callable[[StepProgress], None] | None = None,
                on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainingResult:
    """Train a ThreadsModel on paired slides and profiles; returns the best model and history.

    Raises TrainingError with fewer than two paired patients, TrainingDiverged (a
    TrainingError carrying the last good state) when the loss becomes NaN / Inf, DeviceError
    for 'cuda' without a GPU. The caller's global torch RNG state is left untouched.
    """
    config.check()
    device = resolve_device(config.device)
    with using_torch_threads(config.threads), \
            torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        rate, scores = config.learning_rate, {}
        if rate is None:
            from threads_search.training.lr_sweep import choose_learning_rate

            rate, scores = choose_learning_rate(dataset, config)
        if config.schedule == "auto":
            from threads_search.training.schedule_choice import choose_schedule

            result = choose_schedule(dataset, replace(config, learning_rate=rate), _train, on_step, on_epoch)
        else:
            result = _train(dataset, replace(config, learning_rate=rate), on_step, on_epoch)
        if config.learning_rate is None:
            result.learning_rate_sweep, result.chosen_learning_rate = scores, rate
        return result


def _train(dataset: PairedDataset, config: TrainingConfig, on_step: Callable[[StepProgress], None] | None,
           on_epoch: Callable[[EpochRecord], None] | None) -> TrainingResult:
    run = _ContrastiveRun(dataset, config)
    initial = run.validate()
    result = TrainingResult(run.model, [], 0, initial[0] if initial else None, run.train_patients, run.val_patients,
                            str(run.device), val_modalities=run.validated_modalities())
    result.val_queries = run.last_val_queries
    run.model.train()
    best_state, best_epoch = _fit(run, result, initial[0] if initial else -math.inf, on_step, on_epoch)
    if config.schedule == "wsd":
        # The decay starts from the best epoch of the stable phase and its result is kept whatever
        # its validation figure: a small validation split is too noisy to overrule the annealing.
        run.restore(best_state)
        epochs = config.decay_epochs or max(2, math.ceil(best_epoch / 4))
        run.start_decay(epochs * run.steps_per_epoch)
        result.decayed_from_epoch = best_epoch
        for epoch in range(len(result.history) + 1, len(result.history) + epochs + 1):
            _epoch(run, result, epoch, on_step, on_epoch, best_state, best_epoch)
        best_state, best_epoch = run.state(), len(result.history)
        result.val_queries = run.last_val_queries
    _finish(run, result, best_state, best_epoch)
    return result


def _fit(run: _ContrastiveRun, result: TrainingResult, best_map: float, on_step, on_epoch) -> tuple[dict, int]:
    """Epochs at the schedule's rate until `epochs` or `patience` epochs without a validation gain;
    returns the best epoch's state and number (0: the initial weights)."""
    best_state, best_epoch, epochs_without_gain = run.state(), 0, 0
    for epoch in range(1, run.config.epochs + 1):
        metrics = _epoch(run, result, epoch, on_step, on_epoch, best_state, best_epoch)
        if metrics is None or metrics[0] > best_map:  # without validation, the last epoch is the best
            best_map = metrics[0] if metrics else best_map
            best_state, best_epoch, epochs_without_gain = run.state(), epoch, 0
            result.val_queries = run.last_val_queries
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= run.config.patience:
                result.stopped_early = True
                break
    return best_state, best_epoch


def _epoch(run: _ContrastiveRun, result: TrainingResult, epoch: int, on_step, on_epoch, best_state: dict,
           best_epoch: int) -> tuple[float, float] | None:
    """One pass over the training patients and the validation after it (recorded in `result.history`);
    raises TrainingDiverged, keeping `best_state`, when the loss stops being finite."""
    started = time.perf_counter()
    losses = []
    batches = run.batches()
    for step, patients in enumerate(batches, start=1):
        loss = run.step(patients)
        if loss is not None and not math.isfinite(loss):
            _finish(run, result, best_state, best_epoch)
            raise TrainingDiverged(f"loss became {loss} at epoch {epoch}, step {step}; kept the weights of epoch "
                                   f"{best_epoch} (try a lower learning rate)", result)
        if loss is not None:
            losses.append(loss)
            if on_step:
                on_step(StepProgress(epoch, step, len(batches), loss))
    metrics = run.validate()
    record = EpochRecord(epoch, float(np.mean(losses)) if losses else float("nan"),
                         metrics[0] if metrics else None, metrics[1] if metrics else None,
                         run.scheduler.get_last_lr()[0], float(torch.exp(-run.model.logit_scale).item()),
                         time.perf_counter() - started)
    result.history.append(record)
    if on_epoch:
        on_epoch(record)
    return metrics


def _finish(run: _ContrastiveRun, result: TrainingResult, state: dict[str, Any], epoch: int) -> None:
    run.model.load_state_dict(state["model"])
    run.model.to("cpu").eval()
    result.model, result.best_epoch = run.model, epoch
