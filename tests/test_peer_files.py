"""Peer-file details: TRIDENT's 0-patch files (skipped with a note unless --strict) and its
`saveas='pt'` output (a pickled numpy array, read through torch's weights_only allow-list)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_trident
from threads_search.cli.app import app


def run(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_a_zero_patch_file_is_skipped_with_a_note_unless_strict(tmp_path, rng):
    folder = tmp_path / "trident"
    folder.mkdir()
    write_trident(folder / "tissue.h5", rng.normal(size=(8, 16)).astype(np.float32))
    write_trident(folder / "blank.h5", np.zeros((0, 16), np.float32), coords=np.zeros((0, 2), np.int64))
    strict = tmp_path / "strict"
    run("init", strict)
    refused = run("ingest", "slides", strict, folder, "--strict", ok=False)
    assert "blank.h5: empty bag (0 patches)" in refused.output
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slides", atlas, folder)
    assert "1 added" in result.stdout
    assert "blank.h5: empty bag (0 patches); skipped" in result.output
    from threads_search.atlas.store import open_atlas

    with open_atlas(atlas, read_only=True) as opened:
        assert [r[0] for r in opened.sql("SELECT slide_id FROM slides").fetchall()] == ["tissue"]
        assert opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 1
    with open_atlas(strict, read_only=True) as opened:
        assert opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_trident_pt_with_a_numpy_payload_is_read_without_unpickling(tmp_path, rng, dtype):
    import torch

    from threads_search.readers.patch_features import inspect_feature_file, read_bag

    features = rng.normal(size=(7, 16)).astype(dtype)
    torch.save(features, tmp_path / "slide.pt")  # TRIDENT saveas='pt': torch.save of a numpy array
    info = inspect_feature_file(tmp_path / "slide.pt")
    assert (info.n_patches, info.feature_dim, info.file_format) == (7, 16, "pt")
    np.testing.assert_array_equal(read_bag(tmp_path / "slide.pt"), features.astype(np.float32))


def test_pt_with_other_objects_is_refused_in_one_line(tmp_path):
    import torch

    from threads_search.errors import InputError
    from threads_search.readers.patch_features import inspect_feature_file

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"features": torch.ones(3, 4), "extra": Payload()}, tmp_path / "evil.pt")
    torch.save(np.array([{"a": 1}], dtype=object), tmp_path / "objects.pt")
    for name in ("evil.pt", "objects.pt"):
        with pytest.raises(InputError, match=rf"{name}: holds objects other than tensors or numeric numpy arrays") as caught:
            inspect_feature_file(tmp_path / name)
        assert "\n" not in str(caught.value)
    assert not marker.exists()
