"""Precomputed slide embeddings and slides-only atlases, driven from the CLI on files written in
the peers' own layouts: TRIDENT `slide_features_<enc>/<slide>.h5` ((D,) `features`), Patho-Bench
pooled `<id>.h5` ((1, D)), `.npy` + ids, Parquet; pickles refused without being unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app
from conftest import write_csv, write_trident

SUBTYPES = ("luminal", "basal", "her2")
N_PATIENTS = 12


def run(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def slide_ids() -> list[str]:
    return [f"P{p:02d}-S{s}" for p in range(N_PATIENTS) for s in range(2)]


def class_vectors(dim: int, seed: int = 0, spread: float = 0.6) -> np.ndarray:
    """(24, dim) vectors: each slide near its patient's subtype centre (subtype = patient % 3)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SUBTYPES), dim))
    return np.stack([centres[p % 3] + spread * rng.normal(size=dim) for p in range(N_PATIENTS) for _ in range(2)])


@pytest.fixture
def metadata(tmp_path: Path) -> Path:
    rows = [[s, s.split("-")[0], SUBTYPES[int(s[1:3]) % 3], f"site{int(s[1:3]) % 2}"] for s in slide_ids()]
    return write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id", "subtype", "site"], rows)


def write_trident_slide_features(folder: Path, vectors: np.ndarray, ids: list[str]) -> Path:
    """TRIDENT's `WSI.extract_slide_features` output: one `<slide>.h5` per slide holding `features`
    (D,) float32 (attrs name, savetodir) and the patch `coords` (N, 2) with their attributes."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for slide_id, vector in zip(ids, vectors):
        with h5py.File(folder / f"{slide_id}.h5", "w") as handle:
            features = handle.create_dataset("features", data=vector.astype(np.float32))
            features.attrs.update({"name": slide_id, "savetodir": str(folder)})
            coords = handle.create_dataset("coords", data=np.arange(12, dtype=np.int64).reshape(6, 2) * 512)
            coords.attrs.update({"patch_size": 512, "patch_size_level0": 1024, "level0_magnification": 40,
                                 "target_magnification": 20, "name": slide_id})
    return folder


def write_pathobench_pooled(folder: Path, vectors: np.ndarray, ids: list[str]) -> Path:
    """Patho-Bench pooled features: `<id>.h5` with `features` of shape (1, D)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for slide_id, vector in zip(ids, vectors):
        with h5py.File(folder / f"{slide_id}.h5", "w") as handle:
            handle.create_dataset("features", data=vector[None, :].astype(np.float32))
    return folder


def atlas_state(path: Path) -> tuple:
    from threads_search.atlas.store import open_atlas

    with open_atlas(path, read_only=True) as atlas:
        return tuple(atlas.sql(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("items", "models", "embeddings"))


def test_trident_slide_features_are_searched_evaluated_and_prototyped(tmp_path, metadata):
    features = write_trident_slide_features(tmp_path / "slide_features_titan", class_vectors(768), slide_ids())
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slide-embeddings", atlas, features, "--encoder", "titan", "--metadata", metadata)
    assert "24 added" in result.stdout
    run("index", atlas, "--model", "titan")
    hits = json.loads(run("search", atlas, "--slide-id", "P00-S0", "-k", "5", "--format", "json").stdout)["hits"]
    assert len(hits) == 5 and all(h["subtype"] == "luminal" for h in hits)
    assert all(h["patient_id"] != "P00" for h in hits)  # own patient excluded
    report_path = tmp_path / "eval.json"
    run("eval", atlas, "--label", "subtype", "--queries", "site = 'site0'", "--database", "site = 'site1'", "-k", "5",
        "--query-modality", "slides", "--target", "slides", "--bootstrap", "200", "--json", report_path)
    report = json.loads(report_path.read_text())
    assert report["n_queries"] == 12 and report["n_database"] == 12
    assert report["metrics"]["mAP@5"] > 0.7  # chance is ~0.2 with three balanced classes
    low, high = report["ci95"]["mAP@5"]
    assert low <= report["metrics"]["mAP@5"] <= high
    built = run("prototypes", atlas, "--label", "subtype", "--modality", "slides", "--model", "titan").stdout
    assert all(f"{s}" in built for s in SUBTYPES)
    classified = run("classify", atlas, "--prototypes", "subtype-slides", "--format", "json").stdout
    assert "luminal" in classified


def test_model_records_name_dimension_and_file_fingerprints(tmp_path, metadata):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import load_atlas_model, model_summaries, resolve_model_id

    features = write_trident_slide_features(tmp_path / "slide_features_feather", class_vectors(512), slide_ids())
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, features, "--encoder", "feather", "--metadata", metadata)
    again = run("ingest", "slide-embeddings", atlas, features, "--encoder", "feather")
    assert "0 added" in again.stdout and "24 unchanged" in again.stdout
    with open_atlas(atlas, read_only=True) as opened:
        (summary,) = model_summaries(opened)
        model = load_atlas_model(opened, resolve_model_id(opened, "feather"))
        assert opened.sql("SELECT count(*) FROM embeddings").fetchone()[0] == 1  # the re-run wrote nothing
    assert summary["recipe"] == "precomputed" and model.out_dim == 512 and model.name == "feather"
    info = run("info", atlas).stdout
    assert "24 slides known by precomputed slide embeddings only" in info and "precomputed (feather)" in info
    files = summary["provenance"]["files"]
    assert sorted(f["file"] for f in files) == sorted(f"{s}.h5" for s in slide_ids())
    assert all(len(f["fingerprint"]) == 32 for f in files)


def test_pathobench_1xd_files_of_1280_dims(tmp_path, metadata):
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id

    vectors = class_vectors(1280, seed=2)
    folder = write_pathobench_pooled(tmp_path / "pooled", vectors, slide_ids())
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, folder, "--encoder", "prism", "--metadata", metadata)
    with open_atlas(atlas, read_only=True) as opened:
        _, stored = load_embeddings(opened, resolve_model_id(opened, "prism"), "slides")
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, expected, atol=1e-6)  # stored L2-normalised, in vid (= file) order


def test_npy_with_ids_and_parquet_layouts(tmp_path, metadata):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, vectors = slide_ids(), class_vectors(512, seed=3)
    np.save(tmp_path / "first.npy", vectors[:12].astype(np.float32))
    (tmp_path / "first.txt").write_text("\n".join(ids[:12]) + "\n")
    list_table = pa.table({"slide_id": ids[12:18], "embedding": [list(map(float, v)) for v in vectors[12:18]]})
    pq.write_table(list_table, tmp_path / "lists.parquet")
    wide = {"case": ids[18:], **{f"f{j}": vectors[18:, j] for j in range(512)}}
    pq.write_table(pa.table(wide), tmp_path / "wide.parquet")
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, tmp_path / "first.npy", "--ids", tmp_path / "first.txt",
        "--encoder", "chief", "--metadata", metadata)
    run("ingest", "slide-embeddings", atlas, tmp_path / "lists.parquet", tmp_path / "wide.parquet", "--encoder", "chief",
        "--metadata", metadata)
    assert atlas_state(atlas) == (24, 1, 2)  # one model, two parts
    run("index", atlas, "--model", "chief")
    hits = json.loads(run("search", atlas, "--slide-id", ids[20], "-k", "3", "--format", "json").stdout)["hits"]
    assert {h["subtype"] for h in hits} == {SUBTYPES[10 % 3]}


@pytest.mark.parametrize(("name", "write", "message"), [
    ("mismatch.npy", lambda p: (np.save(p, np.ones((3, 8), np.float32)), p.with_suffix(".txt").write_text("a\nb\n")),
     r"mismatch\.txt: 2 ids for the 3 rows of mismatch\.npy"),
    ("objects.npy", lambda p: (np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True),
                               p.with_suffix(".txt").write_text("a\n")), r"objects\.npy: not a plain numeric \.npy"),
    ("bag.h5", lambda p: write_trident(p, np.ones((5, 8), np.float32)), r"bag\.h5: .*shape \(5, 8\).*ingest slides"),
    ("nan.h5", lambda p: write_trident_slide_features(p.parent, np.array([[np.nan] * 8]), ["nan"]), r"nan\.h5: embedding holds NaN"),
])
def test_bad_files_are_one_line_errors_and_change_nothing(tmp_path, name, write, message):
    import re

    good = write_trident_slide_features(tmp_path / "good", class_vectors(8)[:2], ["A", "B"])
    path = tmp_path / "bad" / name
    path.parent.mkdir()
    write(path)
    atlas = tmp_path / "atlas"
    run("init", atlas)
    extra = ["--ids", path.with_suffix(".txt")] if name.endswith(".npy") else []
    inputs = [path] if name.endswith(".npy") else [good, path]
    result = run("ingest", "slide-embeddings", atlas, *inputs, *extra, "--encoder", "x", ok=False)
    assert result.exit_code != 0
    assert re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert atlas_state(atlas) == (0, 0, 0)


def test_pickle_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "titan_embeddings.pkl"
    path.write_bytes(pickle.dumps({"embeddings": Payload(), "filenames": ["a.svs"]}))
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slide-embeddings", atlas, path, "--encoder", "titan", ok=False)
    assert result.exit_code != 0 and not marker.exists()
    assert "never unpickled" in result.output and "--ids" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert atlas_state(atlas) == (0, 0, 0)


def test_dimensions_must_agree_and_a_changed_vector_is_refused(tmp_path):
    first = write_trident_slide_features(tmp_path / "a", class_vectors(16)[:2], ["A", "B"])
    other = write_trident_slide_features(tmp_path / "b", class_vectors(32)[:1], ["C"])
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slide-embeddings", atlas, first, other, "--encoder", "x", ok=False)
    assert "C.h5: 32-d embeddings" in result.output and atlas_state(atlas) == (0, 0, 0)
    run("ingest", "slide-embeddings", atlas, first, "--encoder", "x")
    changed = write_trident_slide_features(tmp_path / "c", class_vectors(16, seed=9)[:1], ["A"])
    result = run("ingest", "slide-embeddings", atlas, changed, "--encoder", "x", ok=False)
    assert "A.h5: slide 'A' already has another 'x' embedding" in result.output
    assert atlas_state(atlas) == (2, 1, 1)


def test_slide_known_by_embedding_keeps_it_when_its_patch_features_arrive(tmp_path, metadata, rng):
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id

    ids = slide_ids()[:4]
    features = write_trident_slide_features(tmp_path / "slide_features_titan", class_vectors(768)[:4], ids)
    bags = tmp_path / "bags"
    bags.mkdir()
    for slide_id in ids:
        write_trident(bags / f"{slide_id}.h5", rng.normal(size=(20, 64)).astype(np.float32))
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, features, "--encoder", "titan", "--metadata", metadata)
    run("ingest", "slides", atlas, bags)
    run("embed", atlas, "--model", "meanpool")
    with open_atlas(atlas, read_only=True) as opened:
        for name in ("titan", "meanpool"):
            vids, _ = load_embeddings(opened, resolve_model_id(opened, name), "slides")
            assert len(vids) == 4, name
        patients = dict(opened.sql("SELECT item_id, patient_id FROM items").fetchall())
    assert patients["P00-S1"] == "P00"  # the metadata's pairing survives the feature ingest
    run("index", atlas, "--model", "titan")
    result = run("search", atlas, "--features", bags / "P00-S0.h5", "--model", "titan", ok=False)
    assert "holds precomputed slide embeddings and cannot encode patch features" in result.output
    query = write_trident_slide_features(tmp_path / "new", class_vectors(768)[1:2], ["new-slide"]) / "new-slide.h5"
    hits = json.loads(run("search", atlas, "--features", query, "--model", "titan", "-k", "4", "--format", "json",
                          "--include-same-patient").stdout)["hits"]
    assert hits[0]["id"] == ids[1] and hits[0]["score"] > 0.999  # the same vector as stored for P00-S1


def test_slides_only_atlas_with_builtin_meanpool(tmp_path, metadata, rng):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import model_summaries

    bags = tmp_path / "bags"
    bags.mkdir()
    centres = rng.normal(size=(3, 64)) * 2
    for slide_id in slide_ids():
        patient = int(slide_id[1:3])
        write_trident(bags / f"{slide_id}.h5", (centres[patient % 3] + rng.normal(size=(30, 64))).astype(np.float32),
                      encoder="resnet50")
    ids = []
    for name in ("a", "b"):
        atlas = tmp_path / name
        run("init", atlas)
        run("ingest", "slides", atlas, bags, "--metadata", metadata)
        for recipe in ("meanpool", "threads-abmil-cpu"):
            refused = run("train", atlas, "--recipe", recipe, ok=False)
            assert "needs no training" in refused.output and "--model meanpool" in refused.output
        result = run("embed", atlas, "--model", "meanpool")
        assert "embedded 24 slides" in result.stdout
        assert "0 slides (+24 already)" in run("embed", atlas, "--model", "meanpool").stdout
        with open_atlas(atlas, read_only=True) as opened:
            ids.append([m["model_id"] for m in model_summaries(opened)])
    assert ids[0] == ids[1] and len(ids[0]) == 1  # the built-in model has one deterministic id
    run("index", tmp_path / "a")
    hits = json.loads(run("search", tmp_path / "a", "--slide-id", "P01-S0", "-k", "5", "--format", "json").stdout)["hits"]
    assert all(h["subtype"] == "basal" for h in hits)
    report_path = tmp_path / "eval.json"
    run("eval", tmp_path / "a", "--label", "subtype", "--queries", "site = 'site0'", "--database", "site = 'site1'",
        "-k", "5", "--query-modality", "slides", "--bootstrap", "100", "--json", report_path)
    assert json.loads(report_path.read_text())["metrics"]["mAP@5"] > 0.7
    run("prototypes", tmp_path / "a", "--label", "subtype", "--modality", "slides")


def test_meanpool_needs_patch_features(tmp_path):
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("embed", atlas, "--model", "meanpool", ok=False)
    assert "no patch features ingested" in result.output and atlas_state(atlas) == (0, 0, 0)


@pytest.mark.parametrize("layout", ["pathobench", "trident"])
def test_slide_embedding_among_patch_bags_is_refused(tmp_path, rng, layout):
    bags = tmp_path / "bags"
    bags.mkdir()
    write_trident(bags / "real.h5", rng.normal(size=(10, 32)).astype(np.float32))
    vector = rng.normal(size=(1, 32))
    if layout == "pathobench":  # (1, D), no coords
        write_pathobench_pooled(bags, vector, ["pooled"])
    else:  # (D,) beside the patch coords
        write_trident_slide_features(bags, vector, ["pooled"])
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slides", atlas, bags, ok=False)
    assert result.exit_code != 0
    assert "pooled.h5" in result.output and "ingest slide-embeddings" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert atlas_state(atlas) == (0, 0, 0)


def test_encoder_is_read_from_a_trident_slide_features_folder(tmp_path, metadata):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import model_summaries

    job = tmp_path / "job" / "20x_512px_0px_overlap"
    write_trident_slide_features(job / "slide_features_titan", class_vectors(768)[:4], slide_ids()[:4])
    write_trident_slide_features(tmp_path / "elsewhere", class_vectors(768)[:1], ["X"])
    atlas = tmp_path / "atlas"
    run("init", atlas)
    refused = run("ingest", "slide-embeddings", atlas, tmp_path / "elsewhere", ok=False)
    assert "--encoder NAME" in refused.output and "slide_features_<encoder>" in refused.output
    run("ingest", "slide-embeddings", atlas, job / "slide_features_titan")
    with open_atlas(atlas, read_only=True) as opened:
        assert [m["provenance"]["encoder"] for m in model_summaries(opened)] == ["titan"]


@pytest.mark.parametrize("with_patch_features", [True, False])
def test_molecular_encoders_align_to_precomputed_embeddings(tmp_path, metadata, rng, with_patch_features):
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id

    features = write_trident_slide_features(tmp_path / "slide_features_titan", class_vectors(768), slide_ids())
    genes = [f"G{i}" for i in range(20)]
    rows = [[f"P{p:02d}-01A"] + list(np.exp(rng.normal(2, 1, size=20)).round(3)) for p in range(N_PATIENTS)]
    expression = write_csv(tmp_path / "expression.csv", ["sample_id"] + genes, rows)
    samples = write_csv(tmp_path / "samples.csv", ["sample_id", "patient_id"],
                        [[f"P{p:02d}-01A", f"P{p:02d}"] for p in range(N_PATIENTS)])
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, features, "--encoder", "titan", "--metadata", metadata)
    run("ingest", "expression", atlas, expression, "--metadata", samples)
    if with_patch_features:
        bags = tmp_path / "bags"
        bags.mkdir()
        for slide_id in slide_ids():
            write_trident(bags / f"{slide_id}.h5", rng.normal(size=(10, 32)).astype(np.float32))
        run("ingest", "slides", atlas, bags)
    run("train", atlas, "--slide-encoder", "titan", "--epochs", "2", "--quiet")
    run("embed", atlas)
    with open_atlas(atlas, read_only=True) as opened:
        aligned, titan = resolve_model_id(opened), resolve_model_id(opened, "titan")
        assert aligned != titan
        _, copied = load_embeddings(opened, aligned, "slides")
        _, frozen = load_embeddings(opened, titan, "slides")
        profile_vids, _ = load_embeddings(opened, aligned, "expression")
    np.testing.assert_array_equal(copied, frozen)  # the slide space is the precomputed one, unchanged
    assert len(profile_vids) == N_PATIENTS


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_the_service_searches_a_precomputed_slides_only_atlas(tmp_path, metadata):
    from fastapi.testclient import TestClient

    from threads_search.service.app import create_app
    from threads_search.service.config import ServiceConfig

    features = write_trident_slide_features(tmp_path / "slide_features_chief", class_vectors(768, seed=4), slide_ids())
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slide-embeddings", atlas, features, "--metadata", metadata)
    run("index", atlas, "--model", "chief")
    expected = json.loads(run("search", atlas, "--slide-id", "P02-S1", "-k", "6", "--format", "json").stdout)["hits"]
    with TestClient(create_app(ServiceConfig(atlas=atlas))) as client:
        response = client.post("/api/search", json={"slide_id": "P02-S1", "k": 6})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    assert all(h["subtype"] == "her2" for h in hits)


def test_a_failure_inside_the_write_leaves_the_atlas_as_it_was(tmp_path, metadata, monkeypatch):
    import threads_search.ingest.slide_embeddings as job
    from threads_search.atlas.store import open_atlas

    features = write_trident_slide_features(tmp_path / "slide_features_titan", class_vectors(64), slide_ids())
    atlas = tmp_path / "atlas"
    run("init", atlas)
    real_add_part = job.add_part

    def add_part_then_fail(*args, **kwargs):
        real_add_part(*args, **kwargs)  # the part file is written and recorded, then the process "dies"
        raise RuntimeError("interrupted")

    monkeypatch.setattr(job, "add_part", add_part_then_fail)
    with open_atlas(atlas) as opened, pytest.raises(RuntimeError, match="interrupted"):
        job.ingest_slide_embeddings(opened, [features], metadata_csv=metadata)
    assert atlas_state(atlas) == (0, 0, 0)
    assert not list(atlas.rglob("*.parquet"))  # the written part was removed with the rollback
    assert not list((atlas / "models").glob("*")) if (atlas / "models").exists() else True  # so was the new model
    monkeypatch.setattr(job, "add_part", real_add_part)
    with open_atlas(atlas) as opened:
        report, _, name = job.ingest_slide_embeddings(opened, [features], metadata_csv=metadata)
    assert (report.added, name) == (24, "titan") and atlas_state(atlas) == (24, 1, 1)
