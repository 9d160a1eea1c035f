"""Who is in a generated cohort: patients (site, subtype, molecular state, clinical columns)
and their slides (bag size, tumour fraction), before any file is written.

Random draws come from independent streams of one `SeedSequence`, so that (for instance)
changing the number of genes does not move the patients or their slides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.errors import InputError
from threads_search.synthetic.config import CohortConfig

# Stream numbers of `np.random.SeedSequence([seed, stream, ...])`; fixed forever so that
# a seed keeps meaning the same cohort.
STREAM_PATIENTS = 1
STREAM_SLIDES = 2
STREAM_FEATURE_WORLD = 3
STREAM_BAGS = 4
STREAM_MOLECULAR_WORLD = 5
STREAM_EXPRESSION = 6
STREAM_MUTATIONS = 7

STAGES = ("I", "II", "III", "IV")
STAGE_PROBABILITIES = (0.3, 0.32, 0.24, 0.14)


def stream_rng(config: CohortConfig, stream: int, *extra: int) -> np.random.Generator:
    """Generator for one named stream (and optional sub-index, e.g. a slide number)."""
    return np.random.default_rng(np.random.SeedSequence([config.seed, stream, *extra]))


@dataclass(frozen=True)
class Patients:
    """One row per patient, in file order (grouped by site).

    state: (n_patients, latent_dim) float64, the continuous molecular state.
    """

    patient_ids: tuple[str, ...]
    sample_ids: tuple[str, ...]
    site_index: np.ndarray
    subtype_index: np.ndarray
    state: np.ndarray
    has_expression: np.ndarray
    has_mutations: np.ndarray
    age: np.ndarray
    sex: tuple[str, ...]
    stage: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.patient_ids)


@dataclass(frozen=True)
class Slides:
    """One row per slide; `patient_row` indexes `Patients`."""

    slide_ids: tuple[str, ...]
    patient_row: np.ndarray
    bag_size: np.ndarray
    tumour_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.slide_ids)


def largest_remainder_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` into integer counts proportional to `weights` (Hamilton's method)."""
    quotas = total * np.asarray(weights, dtype=float) / np.sum(weights)
    counts = np.floor(quotas).astype(int)
    shortfall = total - counts.sum()
    # Ties broken by position, so the split is deterministic.
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:shortfall]] += 1
    return counts


def _heldout_subtype_counts(config: CohortConfig, n_heldout: int) -> np.ndarray:
    """Held-out subtype counts: proportional to the frequencies, each at least the floor.

    The floor is paid for by the most frequent subtypes, one patient at a time.
    """
    frequencies = np.asarray(config.subtype_frequencies)
    counts = largest_remainder_counts(n_heldout, frequencies)
    floor = config.min_heldout_per_subtype
    while np.any(counts < floor):
        needy = int(np.argmin(counts))
        donor = int(np.lexsort((-frequencies, -counts))[0])  # largest count, then commonest
        counts[needy] += 1
        counts[donor] -= 1
    return counts


def subtype_centroids(config: CohortConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_subtypes, latent_dim) centroids, mean pairwise distance separation * sqrt(2 * latent_dim).

    Random directions, but rescaled to a fixed mean distance, so that the difficulty of the
    cohort depends on `subtype_separation` more than on the luck of the seed.
    """
    centroids = rng.standard_normal((len(config.subtypes), config.latent_dim))
    upper = np.triu_indices(len(centroids), k=1)
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)[upper]
    target = config.subtype_separation * np.sqrt(2 * config.latent_dim)
    return centroids * (target / distances.mean())


def _site_sizes(config: CohortConfig, rng: np.random.Generator) -> np.ndarray:
    """Patients per site: unequal sites, with enough held-out patients for the subtype floor."""
    n_subtypes = len(config.subtypes)
    n_train_sites = config.n_sites - config.n_heldout_sites
    required_heldout = n_subtypes * config.min_heldout_per_subtype
    if config.n_patients < required_heldout + n_train_sites:
        raise InputError(
            f"CohortConfig.n_patients: {config.n_patients} is too few for "
            f"{config.min_heldout_per_subtype} held-out patients of each of {n_subtypes} subtypes"
        )
    weights = rng.dirichlet(np.full(config.n_sites, 6.0))
    heldout_share = weights[n_train_sites:].sum()
    n_heldout = max(int(round(config.n_patients * heldout_share)), required_heldout)
    n_heldout = min(n_heldout, config.n_patients - n_train_sites)
    train = largest_remainder_counts(config.n_patients - n_heldout, weights[:n_train_sites])
    heldout = largest_remainder_counts(n_heldout, weights[n_train_sites:])
    return np.concatenate([train, heldout])


def _molecular_coverage(config: CohortConfig, rng: np.random.Generator, n: int):
    """(has_expression, has_mutations) boolean arrays; unpaired patients have neither."""
    n_unpaired = int(round(config.unpaired_fraction * n))
    if config.unpaired_fraction > 0 and n >= 10:
        n_unpaired = max(n_unpaired, 1)
    unpaired = np.zeros(n, dtype=bool)
    unpaired[rng.choice(n, size=n_unpaired, replace=False)] = True
    has_expression = rng.random(n) < config.expression_fraction
    has_mutations = rng.random(n) < config.mutation_fraction
    # A profiled patient has at least one profile; expression is the commoner assay.
    has_expression |= ~has_expression & ~has_mutations
    return has_expression & ~unpaired, has_mutations & ~unpaired


def draw_patients(config: CohortConfig) -> Patients:
    """Sites, subtypes, molecular states, coverage and clinical columns of every patient."""
    rng = stream_rng(config, STREAM_PATIENTS)
    n_subtypes = len(config.subtypes)
    site_sizes = _site_sizes(config, rng)
    site_index = np.repeat(np.arange(config.n_sites), site_sizes)
    heldout = site_index >= config.n_sites - config.n_heldout_sites

    subtype_index = np.empty(config.n_patients, dtype=int)
    subtype_index[~heldout] = rng.choice(
        n_subtypes, size=int((~heldout).sum()), p=config.subtype_frequencies
    )
    heldout_counts = _heldout_subtype_counts(config, int(heldout.sum()))
    subtype_index[heldout] = rng.permutation(np.repeat(np.arange(n_subtypes), heldout_counts))

    centroids = subtype_centroids(config, rng)
    state = centroids[subtype_index] + rng.standard_normal((config.n_patients, config.latent_dim))
    has_expression, has_mutations = _molecular_coverage(config, rng, config.n_patients)

    age = np.clip(np.round(rng.normal(63.0, 11.0, config.n_patients)), 25, 90).astype(int)
    sex = tuple(rng.choice(["female", "male"], size=config.n_patients))
    stage = tuple(rng.choice(STAGES, size=config.n_patients, p=STAGE_PROBABILITIES))

    within_site_number = np.concatenate([np.arange(1, size + 1) for size in site_sizes])
    patient_ids = tuple(
        f"SYN-S{site + 1}-{number:04d}" for site, number in zip(site_index, within_site_number)
    )
    return Patients(
        patient_ids=patient_ids,
        sample_ids=tuple(f"{pid}-01A" for pid in patient_ids),
        site_index=site_index,
        subtype_index=subtype_index,
        state=state,
        has_expression=has_expression,
        has_mutations=has_mutations,
        age=age,
        sex=tuple(str(s) for s in sex),
        stage=tuple(str(s) for s in stage),
    )


def draw_slides(config: CohortConfig, patients: Patients) -> Slides:
    """Slides per patient (TCGA-like `-01Z-00-DX<k>` ids), bag sizes and tumour fractions."""
    rng = stream_rng(config, STREAM_SLIDES)
    low, high = config.slides_per_patient
    n_per_patient = low + rng.binomial(high - low, config.extra_slide_probability, len(patients))
    patient_row = np.repeat(np.arange(len(patients)), n_per_patient)
    slide_number = np.concatenate([np.arange(1, k + 1) for k in n_per_patient])
    slide_ids = tuple(
        f"{patients.patient_ids[row]}-01Z-00-DX{k}" for row, k in zip(patient_row, slide_number)
    )
    n_slides = len(slide_ids)
    # Log-uniform: many small biopsies, a few large resections.
    log_low, log_high = np.log(config.bag_size[0]), np.log(config.bag_size[1] + 1)
    bag_size = np.floor(np.exp(rng.uniform(log_low, log_high, n_slides))).astype(int)
    bag_size = np.clip(bag_size, *config.bag_size)
    tumour_fraction = rng.uniform(*config.tumour_fraction, n_slides)
    return Slides(slide_ids, patient_row, bag_size, tumour_fraction)
