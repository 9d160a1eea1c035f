"""Paired (slide, profile) training data for the contrastive trainer, independent of the atlas.

A `PairedDataset` is a list of slides (each with its patient id and a handle on its bag of
patch features) plus per-patient profile tables (expression and/or mutations, one or more
rows per patient). Slides and profiles pair through `patient_id`.

A slide's bag handle is any of:
- an array (n_patches, dim), held in memory;
- a callable returning that array (e.g. reading an HDF5 file);
- an object with `sample(n, rng) -> (min(n, n_patches), dim)` (reads only what it needs).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from threads_search.errors import InputError, TrainingError

BagSource = Union[np.ndarray, Callable[[], np.ndarray], Any]


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    patient_id: str
    bag: BagSource


@dataclass(frozen=True)
class PairedProfiles:
    """Profiles as rows of a matrix over named genes.

    Attributes:
        patient_ids: (n_rows,) the patient of each row; a patient may have several rows.
        matrix: (n_rows, n_genes) values (expression on `scale`, or 0/1 mutations).
        genes: (n_genes,) column names.
        scale: expression scale 'counts' | 'tpm' | 'log' (not used for mutations).
    """

    patient_ids: Sequence[str]
    matrix: np.ndarray
    genes: Sequence[str]
    scale: str = "log"

    def rows_by_patient(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = defaultdict(list)
        for row, patient in enumerate(self.patient_ids):
            rows[str(patient)].append(row)
        return dict(rows)


@dataclass(frozen=True)
class PairedDataset:
    """Slides + profiles, paired by patient id.

    `labels` (patient_id -> class label) is optional: when given, validation counts a
    retrieved slide as relevant when its label matches the query's (as the evaluator does);
    otherwise only the query's own patient's slides are relevant.
    """

    slides: Sequence[SlideRecord]
    expression: PairedProfiles | None = None
    mutations: PairedProfiles | None = None
    labels: Mapping[str, str] | None = None
    groups: Mapping[str, str] | None = None  # patient_id -> batch group (config.batch_by, e.g. the site)

    def profile_tables(self) -> dict[str, PairedProfiles]:
        tables = {"expression": self.expression, "mutations": self.mutations}
        return {name: table for name, table in tables.items() if table is not None}

    def paired_patients(self) -> list[str]:
        """Sorted ids of patients with at least one slide and at least one profile."""
        with_profiles: set[str] = set()
        for table in self.profile_tables().values():
            if len(table.patient_ids) != np.asarray(table.matrix).shape[0]:
                raise InputError(f"profile table has {len(table.patient_ids)} patient ids for "
                                 f"{np.asarray(table.matrix).shape[0]} rows")
            with_profiles.update(str(p) for p in table.patient_ids)
        with_slides = {str(s.patient_id) for s in self.slides}
        return sorted(with_profiles & with_slides)

    def slides_by_patient(self) -> dict[str, list[SlideRecord]]:
        slides: dict[str, list[SlideRecord]] = defaultdict(list)
        seen: set[str] = set()
        for record in self.slides:
            if record.slide_id in seen:
                raise InputError(f"slide id '{record.slide_id}' appears twice in the training set")
            seen.add(record.slide_id)
            slides[str(record.patient_id)].append(record)
        return dict(slides)


def split_patients(patients: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded patient-level split -> (train, validation), both sorted.

    The validation part is empty when it would hold fewer than 2 patients or leave fewer
    than 2 for training (then model selection falls back to the last epoch).
    """
    if len(patients) < 2:
        raise TrainingError(f"need at least 2 patients with both a slide and a profile, found {len(patients)}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"validation fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(patients)))
    if n_val < 2 or len(patients) - n_val < 2:
        return sorted(patients), []
    order = np.random.default_rng(seed).permutation(len(patients))
    val = sorted(patients[i] for i in order[:n_val])
    train = sorted(patients[i] for i in order[n_val:])
    return train, val


def sample_bag(record: SlideRecord, n_patches: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `n_patches` patches of the slide, drawn without replacement, as
    (min(n_patches, N), dim) float32; refuses empty, non-2-D and non-finite bags."""
    source = record.bag
    if hasattr(source, "sample"):
        bag = np.asarray(source.sample(n_patches, rng))
    else:
        full = np.asarray(source() if callable(source) else source)
        if full.ndim == 2 and full.shape[0] > n_patches:
            # Sorted indices: contiguous reads when `full` is memory-mapped.
            bag = full[np.sort(rng.choice(full.shape[0], n_patches, replace=False))]
        else:
            bag = full
    if bag.ndim != 2 or bag.shape[0] == 0:
        raise InputError(f"slide '{record.slide_id}': bag must be a non-empty (n_patches, dim) array, got shape {bag.shape}")
    bag = bag.astype(np.float32, copy=False)
    if not np.isfinite(bag).all():
        raise InputError(f"slide '{record.slide_id}': patch features contain NaN or Inf")
    return bag


def pack_bags(bags: Sequence[np.ndarray], slide_ids: Sequence[str], in_dim: int, out: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Bags of uneven length back to back -> (sum n_i, in_dim) float32 patches and (B,)
    int64 bag sizes (no padding: the slide encoder pads only its small hidden features).

    `out`, a float32 buffer of at least (sum n_i, in_dim), is filled and a view of it returned;
    reusing one buffer across steps spares the page faults of a fresh 100 MB array per step.
    """
    sizes = np.array([bag.shape[0] for bag in bags], dtype=np.int64)
    total = int(sizes.sum())
    if out is None or out.shape[0] < total or out.shape[1] != in_dim:
        out = np.empty((total, in_dim), dtype=np.float32)
    offset = 0
    for bag, slide_id in zip(bags, slide_ids):
        if bag.shape[1] != in_dim:
            raise InputError(f"slide '{slide_id}': patch features have dimension {bag.shape[1]}, "
                             f"the model expects {in_dim}")
        out[offset:offset + bag.shape[0]] = bag
        offset += bag.shape[0]
    return out[:total], sizes
