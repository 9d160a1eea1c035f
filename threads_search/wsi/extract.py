"""Patch-feature extraction from raw slides, written in TRIDENT's layout.

Per slide: open (OpenSlide) -> thumbnail -> tissue mask -> patch grid at the target
magnification -> patches read on a background thread -> patch encoder -> `<out>/<slide_id>.h5`
(features, level-0 coords, TRIDENT attributes) and `<out>/thumbnails/<slide_id>.png` (tissue
outline). Files are renamed into place when complete, so a re-run skips finished slides.
`extract_slide` does the same for one slide in memory (a query slide for `search --wsi`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from threads_search.errors import DeviceError, InputError, ModelMismatchError, ThreadsSearchError
from threads_search.wsi.files import save_png
from threads_search.wsi.reader import open_slide
from threads_search.wsi.thumbnail import Thumbnail, read_thumbnail
from threads_search.wsi.tiling import TilePlan, plan_tiles
from threads_search.wsi.tissue import TissueMask, contour_overlay, segment_slide_thumbnail
from threads_search.wsi.trident_h5 import is_complete_trident_h5, read_trident_summary, write_trident_h5

DEFAULT_PATCH_ENCODER = "builtin_stain_texture"


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of an extraction job.

    `target_magnification` in x (10 / mpp), `patch_size` in pixels at that magnification,
    `mpp` (um/px) overrides the slides' own resolution, `min_tissue_fraction` of a patch
    that must lie on the tissue mask, `device` 'auto' | 'cpu' | 'cuda'.
    """

    patch_encoder: str = DEFAULT_PATCH_ENCODER
    weights: Path | None = None
    target_magnification: float = 20.0
    patch_size: int = 512
    mpp: float | None = None
    min_tissue_fraction: float = 0.25
    batch_size: int = 32
    thumbnail_max_side: int = 1536
    device: str = "auto"
    keep_going: bool = False


@dataclass
class SlideFeatures:
    """One slide's patch features (n, dim) float32, coords (n, 2) int64 level-0, attributes,
    plus the thumbnail and tissue mask they were planned on."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict
    thumbnail: Thumbnail
    tissue: TissueMask


@dataclass(frozen=True)
class ExtractProgress:
    """A progress report: `status` is 'started', 'patches', 'done', 'skipped' or 'failed'."""

    slide_id: str
    slide_index: int
    n_slides: int
    patches_done: int
    patches_total: int
    status: str


@dataclass
class SlideResult:
    """What happened to one slide: status 'extracted', 'skipped' (already done) or 'failed'."""

    slide_id: str
    wsi_path: Path
    h5_path: Path
    thumbnail_path: Path
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    error: str | None = None


ProgressCallback = Callable[[ExtractProgress], None]


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is visible, else 'cpu'; others pass through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{device}' requested but no CUDA GPU is visible")
    return device


def _plain_number(value: float) -> float | int:
    """20.0 -> 20 (TRIDENT writes integral magnifications as integers)."""
    return int(value) if float(value).is_integer() else float(value)


def _feature_attributes(slide, plan: TilePlan, encoder, thumbnail: Thumbnail, config: ExtractConfig) -> dict:
    from threads_search import __version__

    return {
        "patch_size": plan.patch_size,
        "patch_size_level0": plan.patch_size_level0,
        "level0_magnification": _plain_number(round(plan.level0_magnification, 4)),  # nominal: see level0_ratio
        "target_magnification": _plain_number(plan.target_magnification),
        "level0_width": slide.dimensions[0],
        "level0_height": slide.dimensions[1],
        "overlap": 0,
        "name": slide.slide_id,
        "encoder": encoder.name,
        "encoder_dim": encoder.output_dim,
        "slide_id": slide.slide_id,
        "wsi_file": slide.path.name,
        "wsi_path": str(slide.path.resolve()),  # `ingest slides` records it, so `serve` can show the slide
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "patch_level": plan.level,
        "min_tissue_fraction": config.min_tissue_fraction,
        "thumbnail_downsample": thumbnail.downsample,
        "threads_search_version": __version__,
    }


def _encode_slide(
    wsi_path: Path, encoder, config: ExtractConfig, on_patches: Callable[[int, int], None] | None
) -> SlideFeatures:
    """Plan and encode one slide; `on_patches(done, total)` after every batch."""
    from threads_search.wsi.patch_stream import iter_patch_batches

    with open_slide(wsi_path, mpp=config.mpp) as slide:
        thumbnail = read_thumbnail(slide, config.thumbnail_max_side)
        tissue = segment_slide_thumbnail(thumbnail.rgb, thumbnail.downsample, slide.mpp, str(slide.path))
        plan = plan_tiles(
            slide, tissue, config.target_magnification, config.patch_size, config.min_tissue_fraction
        )
        feature_batches, done = [], 0
        for _, patches in iter_patch_batches(slide, plan, config.batch_size):
            feature_batches.append(encoder.encode(patches))
            done += patches.shape[0]
            if on_patches is not None:
                on_patches(done, plan.n_patches)
        features = np.concatenate(feature_batches).astype(np.float32, copy=False)
        if not np.isfinite(features).all():
            raise ModelMismatchError(f"{wsi_path}: patch encoder '{encoder.name}' produced NaN/Inf features")
        attrs = _feature_attributes(slide, plan, encoder, thumbnail, config)
        return SlideFeatures(slide.slide_id, features, plan.coords, attrs, thumbnail, tissue)


def extract_slide(wsi_path: Path | str, config: ExtractConfig = ExtractConfig(), encoder=None) -> SlideFeatures:
    """Features of one slide in memory (nothing written), e.g. a query slide for `search --wsi`.

    `encoder` (a PatchEncoder) is built from `config` when not given.
    """
    from threads_search.encoders.patch import create_patch_encoder

    if encoder is None:
        encoder = create_patch_encoder(config.patch_encoder, config.weights, device=resolve_device(config.device))
    return _encode_slide(Path(wsi_path), encoder, config, on_patches=None)


def check_slide_files(wsi_paths: Sequence[Path]) -> None:
    """Refuse an empty list, a missing file, or two files giving the same slide id (one line each)."""
    if not wsi_paths:
        raise InputError("no slide files given")
    seen: dict[str, Path] = {}
    for path in wsi_paths:
        if not path.exists():
            raise InputError(f"{path}: no such slide file")
        if path.stem in seen:
            raise InputError(f"{path}: slide id '{path.stem}' also comes from {seen[path.stem]}; rename one")
        seen[path.stem] = path


def _already_done(result: SlideResult, encoder_name: str) -> bool:
    """True when the slide's outputs exist and read back; InputError if made by another encoder."""
    if not result.thumbnail_path.is_file() or not is_complete_trident_h5(result.h5_path):
        return False
    stored = read_trident_summary(result.h5_path)[1].get("encoder")
    if stored == encoder_name:
        return True
    raise InputError(
        f"{result.h5_path}: already holds features from encoder '{stored}', not '{encoder_name}'; use another --out"
    )


def _write_outputs(extracted: SlideFeatures, result: SlideResult, out_dir: Path) -> None:
    from PIL import Image

    outline = contour_overlay(extracted.thumbnail.rgb, extracted.tissue.mask)
    save_png(Image.fromarray(outline), result.thumbnail_path)
    attrs = {**extracted.attrs, "savetodir": str(out_dir)}
    # The .h5 goes last: its presence means the slide is complete (see `_already_done`).
    write_trident_h5(result.h5_path, extracted.features, extracted.coords, attrs)


def _extract_one(
    result: SlideResult,
    update: ExtractProgress,
    encoder,
    config: ExtractConfig,
    out_dir: Path,
    report: ProgressCallback,
) -> None:
    """Extract (or skip) one slide, filling in `result`; errors propagate."""
    if _already_done(result, encoder.name):
        result.status, result.n_patches = "skipped", read_trident_summary(result.h5_path)[0]
        report(replace(update, patches_done=result.n_patches, patches_total=result.n_patches, status="skipped"))
        return
    report(update)

    def on_patches(done: int, total: int) -> None:
        report(replace(update, patches_done=done, patches_total=total, status="patches"))

    extracted = _encode_slide(result.wsi_path, encoder, config, on_patches)
    _write_outputs(extracted, result, out_dir)
    result.status, result.n_patches = "extracted", extracted.coords.shape[0]
    report(replace(update, patches_done=result.n_patches, patches_total=result.n_patches, status="done"))


def run_extraction(
    wsi_paths: Sequence[Path | str],
    out_dir: Path | str,
    config: ExtractConfig,
    progress: ProgressCallback | None = None,
) -> list[SlideResult]:
    """Extract every slide into `out_dir` (see module docstring); one SlideResult per slide.

    Slides whose outputs already exist are skipped. A slide that fails with a user-facing
    error stops the job, or is recorded as 'failed' when `config.keep_going`.
    """
    from threads_search.encoders.patch import create_patch_encoder

    paths, out_dir = [Path(p) for p in wsi_paths], Path(out_dir)
    check_slide_files(paths)
    encoder = create_patch_encoder(config.patch_encoder, config.weights, device=resolve_device(config.device))
    report = progress or (lambda update: None)
    return [extract_one_slide(path, index, len(paths), out_dir, encoder, config, report)
            for index, path in enumerate(paths)]


def extract_one_slide(path: Path, index: int, n_slides: int, out_dir: Path, encoder, config: ExtractConfig,
                      report: ProgressCallback) -> SlideResult:
    """Extract (or skip) slide `index` of `n_slides` into `out_dir`; a user-facing error is
    raised, or recorded as 'failed' when `config.keep_going`. Also run by `extract --ray`'s actors."""
    result = SlideResult(
        slide_id=path.stem,
        wsi_path=path,
        h5_path=out_dir / f"{path.stem}.h5",
        thumbnail_path=out_dir / "thumbnails" / f"{path.stem}.png",
        status="started",
    )
    update = ExtractProgress(path.stem, index, n_slides, 0, 0, "started")
    started = time.perf_counter()
    try:
        _extract_one(result, update, encoder, config, out_dir, report)
    except ThreadsSearchError as error:
        if not config.keep_going:
            raise
        result.status, result.error = "failed", str(error)
        report(replace(update, status="failed"))
    finally:
        result.seconds = time.perf_counter() - started
    return result


def extract_slides(
    wsi_paths: Sequence[Path | str],
    out_dir: Path | str,
    patch_encoder: str = DEFAULT_PATCH_ENCODER,
    weights: Path | str | None = None,
    target_mag: float = 20.0,
    patch_size: int = 512,
    mpp: float | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    min_tissue_fraction: float = 0.25,
    device: str = "auto",
    keep_going: bool = False,
    runner=None,
) -> list[SlideResult]:
    """Extract TRIDENT-layout patch features for `wsi_paths` into `out_dir` (Python API of `extract`).

    `runner(wsi_paths, out_dir, config, progress)` runs the job elsewhere (`extract --ray`:
    `threads_search.distributed.extract`); by default it runs here, slide after slide.

    Writes `<out_dir>/<slide_id>.h5` and `<out_dir>/thumbnails/<slide_id>.png` per slide and
    returns one SlideResult each; `progress` receives ExtractProgress updates per batch.
    """
    config = ExtractConfig(
        patch_encoder=patch_encoder,
        weights=Path(weights) if weights is not None else None,
        target_magnification=float(target_mag),
        patch_size=int(patch_size),
        mpp=mpp,
        min_tissue_fraction=min_tissue_fraction,
        batch_size=batch_size,
        device=device,
        keep_going=keep_going,
    )
    return (runner or run_extraction)(wsi_paths, out_dir, config, progress)
