"""Patch-feature bags of generated slides: what a CONCH-like encoder might have produced.

A slide is a bag of `n` patch features (n, feature_dim) plus level-0 grid coordinates:
- a small, spatially contiguous tumour region whose patches sit at
  `tumour_centre + W @ state` (the patient's molecular state, through a fixed linear map W);
- the majority: generic tissue (stroma, fat, lymphocytes, ...) drawn from a slide-specific
  Dirichlet mixture of prototypes, shifted by `W @ u` with `u` a slide-specific
  microenvironment state that has nothing to do with the subtype;
- Gaussian patch noise, then the site's stain shift (per-channel gain and offset).
The slide mean is dominated by tissue mix, microenvironment and stain, so mean pooling
carries little subtype signal; attention over the tumour patches recovers the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from threads_search.synthetic.config import CohortConfig
from threads_search.synthetic.design import (
    STREAM_BAGS,
    STREAM_FEATURE_WORLD,
    Patients,
    Slides,
    stream_rng,
)

TISSUE_TYPES = ("stroma", "fat", "lymphocytes", "necrosis", "normal_epithelium", "muscle", "mucin")
# Per-channel standard deviation of patch noise; every strength in CohortConfig is a
# multiple of the noise norm NOISE_STD * sqrt(feature_dim).
NOISE_STD = 0.3
TISSUE_CONTRAST = 1.5  # prototype spread around the common mean, in noise norms
SLIDE_STAIN_JITTER = 0.15  # per-slide offset on top of the site's, in noise norms
PATCH_SIZE = 512  # pixels at the target magnification
LEVEL0_MAGNIFICATION = 40
TARGET_MAGNIFICATION = 20
PATCH_SIZE_LEVEL0 = PATCH_SIZE * LEVEL0_MAGNIFICATION // TARGET_MAGNIFICATION


@dataclass(frozen=True)
class FeatureWorld:
    """Fixed vectors shared by all slides; all float32, widths D = feature_dim.

    common_mean: (D,)   tissue_prototypes: (n_tissue_types, D)   tumour_centre: (D,)
    state_map: (D, latent_dim)   site_gain: (n_sites, D)   site_offset: (n_sites, D)
    """

    common_mean: np.ndarray
    tissue_prototypes: np.ndarray
    tumour_centre: np.ndarray
    state_map: np.ndarray
    site_gain: np.ndarray
    site_offset: np.ndarray


@dataclass(frozen=True)
class SlideBag:
    """features (n, D) float16; coords (n, 2) int64 level-0 (x, y); is_tumour (n,) bool."""

    features: np.ndarray
    coords: np.ndarray
    is_tumour: np.ndarray


def _random_directions(rng: np.random.Generator, count: int, dim: int, norm: float):
    """(count, dim) float32 random vectors of exactly the given Euclidean norm."""
    vectors = rng.standard_normal((count, dim))
    vectors *= norm / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def draw_feature_world(config: CohortConfig) -> FeatureWorld:
    """The prototypes, tumour direction, state map and site stain shifts."""
    rng = stream_rng(config, STREAM_FEATURE_WORLD)
    dim = config.feature_dim
    noise_norm = NOISE_STD * np.sqrt(dim)
    common_mean = (0.5 * rng.standard_normal(dim)).astype(np.float32)
    prototypes = common_mean + _random_directions(
        rng, len(TISSUE_TYPES), dim, TISSUE_CONTRAST * noise_norm
    )
    tumour_centre = common_mean + _random_directions(rng, 1, dim, config.tumour_contrast * noise_norm)[0]
    state_map = _random_directions(rng, config.latent_dim, dim, config.state_signal * noise_norm).T
    site_gain = np.exp(config.stain_scale * rng.standard_normal((config.n_sites, dim)))
    site_offset = _random_directions(rng, config.n_sites, dim, config.stain_shift * noise_norm)
    return FeatureWorld(
        common_mean=common_mean,
        tissue_prototypes=prototypes,
        tumour_centre=tumour_centre,
        state_map=np.ascontiguousarray(state_map),
        site_gain=site_gain.astype(np.float32),
        site_offset=site_offset,
    )


def grid_coords(rng: np.random.Generator, n_patches: int, n_tumour: int):
    """Level-0 (x, y) of a blob of `n_patches` grid cells, raster-ordered, and a tumour mask.

    The tissue is the noisy ellipse of cells closest to a centre; the tumour is the
    `n_tumour` tissue cells closest to a random tissue cell (a contiguous region).
    Returns coords (n, 2) int64 and is_tumour (n,) bool.
    """
    side = int(np.ceil(np.sqrt(2.5 * n_patches))) + 2
    rows, cols = np.divmod(np.arange(side * side), side)
    aspect = rng.uniform(0.6, 1.6)
    centre = (side - 1) / 2.0
    radius = np.hypot((cols - centre) * aspect, (rows - centre) / aspect)
    ragged = radius + rng.uniform(0.0, 0.35 * np.sqrt(side), side * side)
    tissue = np.sort(np.argsort(ragged, kind="stable")[:n_patches])  # raster order: y, then x
    tissue_rows, tissue_cols = rows[tissue], cols[tissue]

    seed_cell = rng.integers(n_patches)
    distance = np.hypot(tissue_rows - tissue_rows[seed_cell], tissue_cols - tissue_cols[seed_cell])
    is_tumour = np.zeros(n_patches, dtype=bool)
    is_tumour[np.argsort(distance, kind="stable")[:n_tumour]] = True

    margin = rng.integers(2, 9, size=2) * PATCH_SIZE_LEVEL0
    coords = np.stack([tissue_cols, tissue_rows], axis=1).astype(np.int64) * PATCH_SIZE_LEVEL0
    return coords + margin, is_tumour


def slide_bag(
    config: CohortConfig,
    world: FeatureWorld,
    patients: Patients,
    slides: Slides,
    slide_row: int,
) -> SlideBag:
    """Generate one slide's bag; depends only on (seed, slide_row), not on other slides."""
    rng = stream_rng(config, STREAM_BAGS, slide_row)
    patient = int(slides.patient_row[slide_row])
    site = int(patients.site_index[patient])
    n = int(slides.bag_size[slide_row])
    n_tumour = int(np.clip(round(slides.tumour_fraction[slide_row] * n), 2, n - 1))
    coords, is_tumour = grid_coords(rng, n, n_tumour)

    noise_norm = NOISE_STD * np.sqrt(config.feature_dim)
    microenvironment = config.microenvironment_nuisance * rng.standard_normal(config.latent_dim)
    mixture = rng.dirichlet(np.full(len(TISSUE_TYPES), config.tissue_concentration))
    tumour_row = len(TISSUE_TYPES)  # component index of tumour patches
    component = np.full(n, tumour_row)
    component[~is_tumour] = rng.choice(len(TISSUE_TYPES), size=n - n_tumour, p=mixture)

    # Noise-free patch centres, one per component, with the stain already applied:
    # (centre + noise) * gain + offset == (centre * gain + offset) + noise * gain.
    centres = np.concatenate(
        [
            world.tissue_prototypes + world.state_map @ microenvironment.astype(np.float32),
            (world.tumour_centre + world.state_map @ patients.state[patient].astype(np.float32))[None],
        ]
    )
    slide_jitter = _random_directions(rng, 1, config.feature_dim, SLIDE_STAIN_JITTER * noise_norm)[0]
    gain = world.site_gain[site]
    centres = centres * gain + (world.site_offset[site] + slide_jitter)

    features = quantised_gaussian_noise(rng, (n, config.feature_dim))
    features *= NOISE_STD * gain
    features += centres[component]
    return SlideBag(features.astype(np.float16), coords, is_tumour)


def quantised_gaussian_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Standard-normal noise quantised to 256 levels, float32.

    Four times faster than `standard_normal` (one random byte per value). The step near
    zero is 0.01 standard deviations and the tails stop at 2.9: immaterial for features
    that are averaged or attended over hundreds of patches.
    """
    levels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return _GAUSSIAN_QUANTILES[levels]


_GAUSSIAN_QUANTILES = np.array(
    [NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32
)
_GAUSSIAN_QUANTILES /= _GAUSSIAN_QUANTILES.std()  # unit variance despite the clipped tails
