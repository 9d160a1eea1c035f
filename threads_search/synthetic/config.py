"""Parameters of a generated paired cohort (`CohortConfig`) and its two presets.

`quick_config()` is sized for unit tests (about a second to write); `demo_config()` for
`threads-search demo` on two CPU cores (a few seconds to write, a few hundred MB of HDF5).
Every strength below is in units of the per-channel patch noise (features) or of the
natural-log expression scale (molecular), so the presets read as signal-to-noise ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from threads_search.errors import InputError

DEFAULT_SUBTYPES = (
    "adenocarcinoma",
    "squamous",
    "mucinous",
    "sarcomatoid",
    "neuroendocrine",
    "clear_cell",
)
DEFAULT_SUBTYPE_FREQUENCIES = (0.35, 0.25, 0.17, 0.12, 0.07, 0.04)


@dataclass(frozen=True)
class CohortConfig:
    """Everything that shapes a generated cohort; the same config and seed give the same bytes.

    Cohort shape:
        seed: root of every random draw.
        n_patients: patients over all sites.
        slides_per_patient: (min, max) diagnostic slides per patient.
        extra_slide_probability: chance of each slide beyond the minimum.
        n_sites / n_heldout_sites: contributing sites; the last `n_heldout_sites` form the
            held-out cohort (metadata `cohort = 'heldout'`, the rest `'train'`).
        min_heldout_per_subtype: every subtype, the rarest included, has at least this many
            held-out patients (held-out sites are curated to contain rare cases).
        expression_fraction / mutation_fraction: share of molecularly profiled patients with
            an expression profile / a mutation panel.
        unpaired_fraction: share of patients with slides but no molecular profile at all.

    Slides (patch-feature bags, TRIDENT layout):
        feature_dim: patch feature width (768 like CONCH v1.5).
        bag_size: (min, max) patches per slide, drawn log-uniformly.
        tumour_fraction: (min, max) share of tumour patches per slide, drawn uniformly.
        tumour_contrast: norm of the tumour direction, in patch-noise norms.
        state_signal: norm of the state-to-feature map per unit of state, in patch-noise norms.
        microenvironment_nuisance: spread of the slide-specific microenvironment state that
            moves the non-tumour patches along the same directions as the tumour state, in
            units of the patient-level state spread. It is what keeps mean pooling weak.
        tissue_concentration: Dirichlet concentration of the per-slide tissue-type mixture
            (smaller: more varied slides).
        stain_shift: norm of each site's feature offset, in patch-noise norms.
        stain_scale: standard deviation of each site's per-channel log gain.
        encoder_name: the `encoder` attribute written into the HDF5 files.

    Molecular state and profiles:
        latent_dim: dimension of the molecular state.
        subtypes / subtype_frequencies: class names and prevalences (imbalanced).
        subtype_separation: mean distance between subtype centroids, as a multiple of the
            typical distance between two patients of one subtype (sqrt(2 * latent_dim)).
        n_genes: expression genes (a few known symbols, then `GENE00001`-style names).
        informative_gene_fraction: share of genes whose expression follows the state.
        expression_noise: per-sample, per-gene noise on the natural-log scale.
        batch_shift: standard deviation of each site's gene-wise log offset.
        driver_probability: chance that a subtype's first driver is mutated (the second
            driver gets 60% of it).
        background_mutation_rate: mean per-gene chance of a passenger mutation.
    """

    seed: int = 0
    n_patients: int = 360
    slides_per_patient: tuple[int, int] = (1, 2)
    extra_slide_probability: float = 0.2
    n_sites: int = 6
    n_heldout_sites: int = 2
    min_heldout_per_subtype: int = 3
    expression_fraction: float = 0.92
    mutation_fraction: float = 0.85
    unpaired_fraction: float = 0.03

    feature_dim: int = 768
    bag_size: tuple[int, int] = (200, 1500)
    tumour_fraction: tuple[float, float] = (0.03, 0.15)
    tumour_contrast: float = 2.0
    state_signal: float = 0.45
    microenvironment_nuisance: float = 0.35
    tissue_concentration: float = 0.8
    stain_shift: float = 1.0
    stain_scale: float = 0.05
    encoder_name: str = "synthetic_conch_v15"

    latent_dim: int = 8
    subtypes: tuple[str, ...] = DEFAULT_SUBTYPES
    subtype_frequencies: tuple[float, ...] = DEFAULT_SUBTYPE_FREQUENCIES
    subtype_separation: float = 1.6
    n_genes: int = 2000
    informative_gene_fraction: float = 0.2
    expression_noise: float = 0.5
    batch_shift: float = 0.3
    driver_probability: float = 0.8
    background_mutation_rate: float = 0.002

    def __post_init__(self) -> None:
        _check_config(self)

    @property
    def site_names(self) -> tuple[str, ...]:
        """`('site1', ..., 'siteN')`; the last `n_heldout_sites` are held out."""
        return tuple(f"site{i + 1}" for i in range(self.n_sites))

    @property
    def heldout_sites(self) -> tuple[str, ...]:
        return self.site_names[self.n_sites - self.n_heldout_sites:]

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def demo_config(seed: int = 0) -> CohortConfig:
    """About 360 patients, bags of 200-1500 patches, 2000 genes: the `demo` command's cohort."""
    return CohortConfig(seed=seed)


def quick_config(seed: int = 0) -> CohortConfig:
    """About 60 patients, bags of 30-150 patches, 300 genes: for tests (about a second)."""
    return replace(
        CohortConfig(seed=seed),
        n_patients=60,
        bag_size=(30, 150),
        n_genes=300,
        # At least 6 x 3 = 18 of the 60 patients are held out, 3 per subtype: the rare
        # classes stay present, at the cost of a flatter held-out class balance.
        min_heldout_per_subtype=3,
    )


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _fail(field: str, problem: str) -> None:
    raise InputError(f"CohortConfig.{field}: {problem}")


def _check_range(config: CohortConfig, field: str, low_bound: float, high_bound: float) -> None:
    low, high = getattr(config, field)
    if not (low_bound <= low <= high <= high_bound):
        _fail(field, f"needs {low_bound} <= min <= max <= {high_bound}, got ({low}, {high})")


def _check_config(config: CohortConfig) -> None:
    """Reject configurations that cannot produce a valid cohort, naming the field."""
    if config.seed < 0:
        _fail("seed", f"must be a non-negative integer, got {config.seed}")
    if config.n_patients < 1:
        _fail("n_patients", f"must be positive, got {config.n_patients}")
    _check_range(config, "slides_per_patient", 1, 9)
    _check_range(config, "bag_size", 2, 10_000_000)
    _check_range(config, "tumour_fraction", 1e-4, 0.9)
    if not 1 <= config.n_heldout_sites < config.n_sites:
        _fail("n_heldout_sites", f"must be in [1, n_sites - 1], got {config.n_heldout_sites}")
    if len(config.subtypes) != len(config.subtype_frequencies) or len(config.subtypes) < 2:
        _fail("subtype_frequencies", "needs one frequency per subtype and at least 2 subtypes")
    if len(set(config.subtypes)) != len(config.subtypes):
        _fail("subtypes", "names must be unique")
    if min(config.subtype_frequencies) <= 0 or not math.isclose(
        sum(config.subtype_frequencies), 1.0, abs_tol=1e-6
    ):
        _fail("subtype_frequencies", "must be positive and sum to 1")
    for field in (
        "extra_slide_probability",
        "expression_fraction",
        "mutation_fraction",
        "unpaired_fraction",
        "informative_gene_fraction",
        "driver_probability",
        "background_mutation_rate",
    ):
        if not 0.0 <= getattr(config, field) <= 1.0:
            _fail(field, f"must be in [0, 1], got {getattr(config, field)}")
    for field in ("feature_dim", "latent_dim", "n_genes"):
        if getattr(config, field) < 2:
            _fail(field, f"must be at least 2, got {getattr(config, field)}")
    if config.min_heldout_per_subtype < 0:
        _fail("min_heldout_per_subtype", "must be non-negative")
    if not config.encoder_name.strip():
        _fail("encoder_name", "must not be empty")
