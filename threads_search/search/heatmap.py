"""`heatmap`: which regions of a slide the slide encoder attends to, painted over its thumbnail.

The slide is an atlas slide (`slide_id`: its feature file gives the features and level-0
coordinates) or a raw slide (`wsi`: extracted in memory as the atlas's slides were, see
`query.extract_like_atlas`). The attention heads are averaged per patch (each head's weights
sum to one over the slide) and drawn as true values, a ratio to the slide's mean on a log2
scale with numbered ticks (`wsi.heatmap.render_heatmap`), under a title naming the slide and
the model, over a background: the raw slide's thumbnail when it is given, else the thumbnail
`extract` wrote (recorded at ingest, or beside the feature file as `thumbnails/<slide_id>.png`),
else one made from the raw slide recorded at ingest (`--wsi-dir`), else a blank canvas laid out
from the coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.store import Atlas
from threads_search.errors import InputError, ModelMismatchError

BLANK_CANVAS_MAX_SIDE = 1024
TOP_PATCHES = 3


@dataclass
class HeatmapResult:
    """What was drawn: `size` (width, height) px of the PNG (title + thumbnail + colour bar);
    `top_patches` the level-0 (x, y) and mean attention of the most attended patches;
    `weight_range` the smallest and largest mean attention (uniform is 1 / n_patches);
    `scale_limit` L of the colour scale, which spans 2^-L to 2^L times the mean."""

    path: Path | None
    slide_id: str
    model_id: str
    recipe: str
    n_patches: int
    n_heads: int
    background: str  # 'slide thumbnail' | 'extract thumbnail' | 'blank canvas'
    size: tuple[int, int]
    top_patches: list[tuple[int, int, float]]
    weight_range: tuple[float, float]
    scale_limit: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class SlideAttention:
    """One atlas slide's attention: `weights` (n,) float64 (heads averaged, sum to one),
    `coords` (n, 2) int64 level-0 (x, y), patch side in level-0 px."""

    slide_id: str
    model_id: str
    recipe: str
    coords: np.ndarray
    weights: np.ndarray
    n_heads: int
    patch_size_level0: float


@dataclass
class _Background:
    """A PIL image of the whole slide and its level-0 pixels per image pixel."""

    image: object
    downsample: float
    kind: str


@dataclass
class _SlidePatches:
    slide_id: str
    features: np.ndarray  # (n, dim) float32
    coords: np.ndarray  # (n, 2) int64 level-0 (x, y)
    patch_size_level0: float
    patch_encoder: str | None


def has_attention(model) -> bool:
    """True for models whose slide encoder weighs patches (ABMIL, FEATHER, CHIEF), False for mean pooling."""
    return bool(getattr(model, "has_patch_attention", False))


def _attention_model(atlas: Atlas, requested: str | None):
    """(model_id, model) of a model with per-patch attention; refuses baselines, naming one that has it."""
    from threads_search.atlas.stored_models import load_atlas_model, resolve_model_id

    model_id = resolve_model_id(atlas, requested)
    model = load_atlas_model(atlas, model_id)
    if has_attention(model):
        return model_id, model
    from threads_search.atlas.stored_models import list_models

    others = [(m, r) for m, r in list_models(atlas) if m != model_id]
    with_attention = [(m, r) for m, r in others if has_attention(load_atlas_model(atlas, m))]
    hint = (f"use --model {with_attention[0][0]} ({with_attention[0][1]})" if with_attention
            else f"train one with `threads-search train {atlas.root}`")
    raise ModelMismatchError(f"model {model_id} ({model.recipe}) has no attention (a mean weighs every patch alike); "
                             f"a heatmap needs an attention model: {hint}")


def _grid_step(coords: np.ndarray) -> float | None:
    """Smallest positive spacing of the patch grid along x or y (level-0 px), None for one patch."""
    steps = np.concatenate([np.diff(np.unique(coords[:, axis])) for axis in (0, 1)])
    steps = steps[steps > 0]
    return float(steps.min()) if steps.size else None


def _patch_size_level0(path: Path, recorded: int | None, attrs: dict, coords: np.ndarray) -> float:
    """The patch side in level-0 px: recorded (TRIDENT), CLAM's level-0 `patch_size`, or the grid step."""
    if recorded:
        return float(recorded)
    if attrs.get("patch_level") == 0 and attrs.get("patch_size"):
        return float(attrs["patch_size"])
    step = _grid_step(coords)
    if step is None:
        raise InputError(f"{path}: no patch_size_level0 attribute and a single patch; cannot tell how large to draw it")
    return step


def _atlas_slide(atlas: Atlas, slide_id: str) -> tuple[_SlidePatches, Path, dict]:
    """An atlas slide's features and coordinates, its feature file and the file's attributes."""
    from threads_search.atlas.slides import load_slide_bag, slide_record
    from threads_search.readers.patch_features import read_coords

    record = slide_record(atlas, slide_id)
    features = load_slide_bag(record)
    coords = read_coords(record.path)
    if coords is None:
        raise InputError(f"{record.path}: no patch coordinates (a .pt tensor); a heatmap needs a TRIDENT or CLAM .h5")
    attrs = record.attrs
    size = _patch_size_level0(record.path, record.patch_size_level0, attrs, coords)
    return _SlidePatches(slide_id, features, coords, size, record.patch_encoder), record.path, attrs


def _wsi_background(wsi: Path, mpp: float | None, coords: np.ndarray, patch_size_level0: float) -> _Background:
    """The raw slide's thumbnail; refused when the patches lie outside it (another slide)."""
    from PIL import Image

    from threads_search.wsi.reader import open_slide
    from threads_search.wsi.thumbnail import read_thumbnail

    with open_slide(wsi, mpp=mpp) as slide:
        width, height = slide.dimensions
        reach = coords.max(axis=0)
        if reach[0] >= width or reach[1] >= height:
            raise InputError(f"{wsi}: patches reach level-0 ({int(reach[0])}, {int(reach[1])}) beyond the slide's "
                             f"{width} x {height} px; is it the slide the features came from?")
        thumbnail = read_thumbnail(slide)
    return _Background(Image.fromarray(thumbnail.rgb), thumbnail.downsample, "slide thumbnail")


def _extract_thumbnail(atlas: Atlas, feature_file: Path, slide_id: str, attrs: dict) -> _Background | None:
    """The outline thumbnail `extract` wrote (recorded at ingest, or beside the feature file)."""
    from PIL import Image

    from threads_search.atlas.slide_images import slide_images

    recorded = slide_images(atlas, slide_id)
    path, downsample = recorded.thumbnail_path, recorded.thumbnail_downsample
    if path is None or not path.is_file():
        path, downsample = feature_file.parent / "thumbnails" / f"{slide_id}.png", attrs.get("thumbnail_downsample")
    if not path.is_file() or not downsample:
        return None
    with Image.open(path) as image:
        return _Background(image.convert("RGB"), float(downsample), "extract thumbnail")


def _recorded_wsi_background(atlas: Atlas, slide_id: str, coords: np.ndarray, patch_size_level0: float):
    """A thumbnail of the raw slide recorded at ingest (`--wsi-dir`), when it is still there."""
    from threads_search.atlas.slide_images import slide_images

    wsi = slide_images(atlas, slide_id).wsi_path
    if wsi is None or not wsi.is_file():
        return None
    return _wsi_background(wsi, None, coords, patch_size_level0)


def blank_background(coords: np.ndarray, patch_size_level0: float, max_side: int = BLANK_CANVAS_MAX_SIDE) -> _Background:
    """A white canvas covering every patch, at most `max_side` px on its longer side."""
    from PIL import Image

    extent = coords.max(axis=0) + patch_size_level0  # level-0 (width, height) reached by the patches
    downsample = max(1.0, float(extent.max()) / max_side)
    size = (max(1, math.ceil(extent[0] / downsample)), max(1, math.ceil(extent[1] / downsample)))
    return _Background(Image.new("RGB", size, (255, 255, 255)), downsample, "blank canvas")


def mean_attention(model, features: np.ndarray) -> tuple[np.ndarray, int]:
    """(n_patches,) float64 attention averaged over heads (sums to one), and the number of heads."""
    _, attention = model.encode_slide(features, return_attention=True)  # (n_heads, n_patches)
    attention = np.asarray(attention, dtype=np.float64)
    return attention.mean(axis=0), attention.shape[0]


def _gather(atlas: Atlas, model, slide_id: str | None, wsi: Path | None, mpp: float | None,
            patch_weights: Path | None = None):
    """(patches, background, notes) for the requested slide."""
    from PIL import Image

    from threads_search.search.query import extract_like_atlas

    if slide_id is None:
        slide, notes = extract_like_atlas(atlas, wsi, mpp, model, patch_weights)
        patches = _SlidePatches(slide.slide_id, slide.features, slide.coords, float(slide.attrs["patch_size_level0"]),
                                slide.attrs["encoder"])
        background = _Background(Image.fromarray(slide.thumbnail.rgb), slide.thumbnail.downsample, "slide thumbnail")
        return patches, background, notes
    patches, feature_file, attrs = _atlas_slide(atlas, slide_id)
    model.check_features(patches.features.shape[1], patches.patch_encoder)
    if wsi is not None:
        background = _wsi_background(wsi, mpp, patches.coords, patches.patch_size_level0)
    else:
        background = (_extract_thumbnail(atlas, feature_file, slide_id, attrs)
                      or _recorded_wsi_background(atlas, slide_id, patches.coords, patches.patch_size_level0)
                      or blank_background(patches.coords, patches.patch_size_level0))
    return patches, background, []


def slide_attention(atlas: Atlas, slide_id: str, model_id: str | None = None) -> SlideAttention:
    """The attention of an atlas slide's patches under a model with attention (the newest trained by default)."""
    model_id, model = _attention_model(atlas, model_id)
    patches, _, _ = _atlas_slide(atlas, slide_id)
    model.check_features(patches.features.shape[1], patches.patch_encoder)
    weights, n_heads = mean_attention(model, patches.features)
    return SlideAttention(slide_id, model_id, model.recipe, patches.coords, weights, n_heads, patches.patch_size_level0)


def heatmap_title(slide_id: str, model_id: str, recipe: str, n_patches: int, n_heads: int) -> list[str]:
    """The two title lines of a heatmap: what is drawn, and how to read the colours."""
    return [f"attention of model {model_id} ({recipe}) on slide {slide_id}",
            f"{n_patches} patches, mean of {n_heads} heads; colour: attention / slide mean (1x = 1/{n_patches}), log2 scale"]


def draw_attention_heatmap(atlas: Atlas, slide_id: str | None = None, wsi: Path | str | None = None,
                           model_id: str | None = None, mpp: float | None = None,
                           patch_weights: Path | str | None = None):
    """(PIL image, HeatmapResult without a path) of a slide's attention; see `attention_heatmap`
    (`patch_weights`: local weights of the atlas's patch encoder, for `wsi`)."""
    from threads_search.wsi.heatmap import AttentionScale, render_heatmap

    if slide_id is None and wsi is None:
        raise InputError("heatmap: give --slide-id ID (an atlas slide) or --wsi FILE (a raw slide)")
    model_id, model = _attention_model(atlas, model_id)
    patches, background, notes = _gather(atlas, model, slide_id, Path(wsi) if wsi is not None else None, mpp,
                                         Path(patch_weights) if patch_weights is not None else None)
    weights, n_heads = mean_attention(model, patches.features)
    scale = AttentionScale.for_weights(weights)
    title = heatmap_title(patches.slide_id, model_id, model.recipe, int(weights.size), n_heads)
    image = render_heatmap(background.image, background.downsample, patches.coords, patches.patch_size_level0, weights,
                           title=title, scale=scale)
    top = [(int(patches.coords[i, 0]), int(patches.coords[i, 1]), float(weights[i]))
           for i in np.argsort(-weights, kind="stable")[:TOP_PATCHES]]
    result = HeatmapResult(path=None, slide_id=patches.slide_id, model_id=model_id, recipe=model.recipe,
                           n_patches=int(weights.size), n_heads=n_heads, background=background.kind, size=image.size,
                           top_patches=top, weight_range=(float(weights.min()), float(weights.max())),
                           scale_limit=scale.limit, notes=notes)
    return image, result


def attention_heatmap(atlas: Atlas, out: Path | str, slide_id: str | None = None, wsi: Path | str | None = None,
                      model_id: str | None = None, mpp: float | None = None,
                      patch_weights: Path | str | None = None) -> HeatmapResult:
    """Draw a slide's attention over its thumbnail into the PNG `out`.

    `slide_id` picks an atlas slide (then `wsi`, if given, only supplies its picture); `wsi`
    alone is a raw slide extracted like the atlas's slides. `model_id` (a prefix is enough)
    defaults to the newest trained model; models without attention are refused.
    """
    from threads_search.wsi.files import save_png

    image, result = draw_attention_heatmap(atlas, slide_id, wsi, model_id, mpp, patch_weights)
    result.path = save_png(image, Path(out))
    return result
