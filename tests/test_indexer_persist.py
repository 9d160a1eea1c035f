"""Save/load with the JSON sidecar, broken files, incremental adds and device resolution."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import threads_search.indexer.device as device_module
from threads_search.errors import DeviceError, IndexFileError, InputError, ModelMismatchError
from threads_search.indexer import (
    add_vectors,
    build_index,
    get_kind,
    list_kinds,
    load_index,
    resolve_device,
    save_index,
    search,
)
from threads_search.indexer.device import device_for_kind
from threads_search.indexer.synthetic import clustered_unit_vectors

N, DIM = 3000, 32


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    vectors = clustered_unit_vectors(N + 500, DIM, seed=20)
    ids = np.random.default_rng(21).choice(10**9, size=N + 500, replace=False).astype(np.int64)
    return vectors, ids


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    """Each kind built on the first N vectors and saved under <tmp>/<kind>."""
    vectors, ids = data
    folder = tmp_path_factory.mktemp("indexes")
    result = {}
    for kind in list_kinds():
        built = build_index(vectors[:N], ids[:N], kind=kind, seed=2, model_id="abc", modality="rna")
        save_index(built, folder / kind)
        result[kind] = (built, folder / kind)
    return result


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_round_trip_keeps_results_and_sidecar(saved, data, kind):
    vectors, ids = data
    built, stem = saved[kind]
    loaded = load_index(stem, device="cpu")
    assert loaded.sidecar == built.sidecar
    assert loaded.sidecar["index_file_bytes"] == stem.with_suffix(".faiss").stat().st_size
    assert (loaded.kind, loaded.count, loaded.dim, loaded.device) == (kind, N, DIM, "cpu")
    queries = vectors[N : N + 20]
    allowed = ids[: N // 2]
    before = search(built, queries, 10, allowed_ids=allowed)
    after = search(loaded, queries, 10, allowed_ids=allowed)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    # Paths with either suffix name the same pair; no temporary files are left behind.
    assert load_index(stem.with_suffix(".json"), device="cpu").count == N
    assert sorted(p.name for p in stem.parent.iterdir() if ".tmp-" in p.name) == []


def test_sidecar_on_disk_is_the_documented_json(saved):
    _, stem = saved["ivf"]
    on_disk = json.loads(stem.with_suffix(".json").read_text())
    for key in ["factory", "kind", "dimension", "metric", "count", "model_id", "modality",
                "build_params", "search_params", "recall_at_10", "build_seconds", "device",
                "faiss_version", "created_at"]:
        assert key in on_disk, key
    assert on_disk["model_id"] == "abc" and on_disk["build_params"]["nlist"] > 0


def _copy_pair(stem, tmp_path):
    target = tmp_path / "copy"
    for suffix in (".faiss", ".json"):
        target.with_suffix(suffix).write_bytes(stem.with_suffix(suffix).read_bytes())
    return target


def _edit_sidecar(stem, **changes):
    path = stem.with_suffix(".json")
    sidecar = json.loads(path.read_text())
    sidecar.update(changes)
    path.write_text(json.dumps(sidecar))


def test_missing_files_are_index_file_errors(saved, tmp_path):
    stem = _copy_pair(saved["flat"][1], tmp_path)
    stem.with_suffix(".faiss").unlink()
    with pytest.raises(IndexFileError, match=r"copy\.faiss is missing; rebuild with"):
        load_index(stem)
    with pytest.raises(IndexFileError, match=r"sidecar .*nothing\.json is missing"):
        load_index(tmp_path / "nothing")


def test_corrupt_and_truncated_index_files_are_refused(saved, tmp_path):
    stem = _copy_pair(saved["hnsw"][1], tmp_path)
    index_file = stem.with_suffix(".faiss")
    size = index_file.stat().st_size
    index_file.write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(IndexFileError, match="corrupt or unreadable") as caught:
        load_index(stem)
    assert "\n" not in str(caught.value) and "rebuild" in str(caught.value)
    original = saved["hnsw"][1].with_suffix(".faiss").read_bytes()
    index_file.write_bytes(original[: size // 2])
    with pytest.raises(IndexFileError, match="bytes but its sidecar records"):
        load_index(stem)
    _edit_sidecar(stem, index_file_bytes=size // 2)
    with pytest.raises(IndexFileError, match="corrupt or unreadable"):
        load_index(stem)


def test_sidecar_disagreeing_with_the_index_is_refused(saved, tmp_path):
    stem = _copy_pair(saved["ivf"][1], tmp_path)
    _edit_sidecar(stem, count=N + 1)
    with pytest.raises(IndexFileError, match=f"holds {N} vectors but its sidecar records {N + 1}"):
        load_index(stem)
    _edit_sidecar(stem, count=N, dimension=DIM * 2)
    with pytest.raises(IndexFileError, match=f"holds {DIM} dimensions"):
        load_index(stem)
    _edit_sidecar(stem, dimension=DIM, kind="annoy")
    with pytest.raises(IndexFileError, match="unknown kind 'annoy'"):
        load_index(stem)
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(IndexFileError, match="unreadable"):
        load_index(stem)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_added_vectors_are_found_and_counted(saved, data, tmp_path, kind):
    vectors, ids = data
    loaded = load_index(saved[kind][1], device="cpu")
    add_vectors(loaded, vectors[N:], ids[N:])
    assert loaded.count == N + 500 and loaded.sidecar["count"] == N + 500
    assert loaded.sidecar["added_since_build"] == 500
    _, found = search(loaded, vectors[N : N + 50], 1)
    assert (found[:, 0] == ids[N : N + 50]).mean() >= (1.0 if kind == "flat" else 0.9)
    save_index(loaded, tmp_path / "grown")
    assert load_index(tmp_path / "grown", device="cpu").count == N + 500


def test_add_refuses_clashing_ids_wrong_dimension_and_overgrowth(saved, data):
    vectors, ids = data
    loaded = load_index(saved["ivf"][1], device="cpu")
    with pytest.raises(InputError, match=f"ids row 1: id {ids[5]} is already in the index"):
        add_vectors(loaded, vectors[N : N + 2], np.array([ids[N], ids[5]]))
    with pytest.raises(ModelMismatchError, match="dimension 16 but the index holds 32-d"):
        add_vectors(loaded, np.ones((2, 16), np.float32), np.array([1, 2]))
    many = clustered_unit_vectors(N + 1, DIM, seed=22)
    with pytest.raises(InputError, match="more than 2x\\); rebuild with"):
        add_vectors(loaded, many, np.arange(N + 1) + 10**10)
    assert loaded.count == N  # nothing was added by the refused calls


def test_device_resolution_without_a_gpu():
    if device_module.gpu_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="device 'gpu' requested but") as caught:
        resolve_device("gpu")
    assert "\n" not in str(caught.value)
    with pytest.raises(DeviceError):
        resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_gpu_requests_fail_cleanly_without_a_gpu(saved, data):
    if device_module.gpu_available():
        pytest.skip("this machine has a GPU")
    vectors, ids = data
    with pytest.raises(DeviceError):
        build_index(vectors[:100], ids[:100], kind="flat", device="gpu")
    with pytest.raises(DeviceError):
        load_index(saved["flat"][1], device="gpu")
    assert load_index(saved["flat"][1]).device == "cpu"  # "auto" falls back to CPU


def test_cpu_only_kinds_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(device_module, "gpu_available", lambda: True)
    assert device_for_kind(get_kind("ivf"), "auto") == "gpu"
    assert device_for_kind(get_kind("hnsw"), "auto") == "cpu"
    expected = r"'hnsw' runs on CPU only; use --device cpu or --kind flat\|ivf$"
    with pytest.raises(DeviceError, match=expected):
        device_for_kind(get_kind("hnsw"), "gpu")
