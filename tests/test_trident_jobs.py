"""TRIDENT job folders given to `ingest slides` / `ingest slide-embeddings`.

A job folder as TRIDENT leaves it: `thumbnails/`, `contours/`, `contours_geojson/` and config /
log files beside `<mag>x_<size>px_<overlap>px_overlap/`, which holds `patches/`,
`visualization/`, `features_<patch encoder>/` and `slide_features_<slide encoder>/`. Only the
`features_*` (resp. `slide_features_*`) folder of one encoder is read, and its name is the
encoder of files that name none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_csv, write_trident
from test_published_encoders import feather_state, save_safetensors
from test_slide_embeddings import write_trident_slide_features
from threads_search.cli.app import app

SLIDES = ("TCGA-A1-01", "TCGA-A2-01", "TCGA-A3-01")


def run(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def refused(*args) -> str:
    """The one-line message of a command that must fail."""
    result = run(*args, ok=False)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def write_job(job: Path, rng, encoders: dict[str, int], mag: str = "20x", slides=SLIDES,
              encoder_attr: bool = False, bags: dict[str, np.ndarray] | None = None) -> Path:
    """A TRIDENT job folder: `features_<enc>/<slide>.h5` of `(n, dim)` float32 per encoder (name: dim),
    beside the patch coordinates, thumbnails, contours, configs and logs TRIDENT also writes.
    `bags` gives some slides' features; `encoder_attr` writes the `encoder` attribute (newer TRIDENT versions)."""
    import h5py

    patching = job / f"{mag}_256px_0px_overlap"
    for encoder, dim in encoders.items():
        (patching / f"features_{encoder}").mkdir(parents=True)
        for slide in slides:
            features = (bags or {}).get(slide)
            if features is None:
                features = rng.normal(size=(int(rng.integers(8, 20)), dim)).astype(np.float32)
            write_trident(patching / f"features_{encoder}" / f"{slide}.h5", features,
                          encoder=encoder if encoder_attr else None)
    for folder in ("patches", "visualization"):
        (patching / folder).mkdir(parents=True, exist_ok=True)
    for slide in slides:  # coordinates only: read as features, they would be refused
        with h5py.File(patching / "patches" / f"{slide}_patches.h5", "w") as handle:
            handle.create_dataset("coords", data=np.zeros((4, 2), np.int64)).attrs["patch_size"] = 256
        (patching / "visualization" / f"{slide}.jpg").write_bytes(b"\xff\xd8")
        for folder, suffix in (("thumbnails", ".jpg"), ("contours", ".jpg"), ("contours_geojson", ".geojson")):
            (job / folder).mkdir(exist_ok=True)
            (job / folder / f"{slide}{suffix}").write_text("{}")
    (job / "_config_segmentation.json").write_text("{}")
    (job / "_logs_segmentation.txt").write_text("")
    (patching / "_config_coords.json").write_text("{}")
    (patching / "_logs_feature_extraction.txt").write_text("")
    return job


def slide_rows(atlas: Path) -> tuple[list[tuple], str | None, str | None]:
    """(slide_id, patch_encoder) rows, the atlas's patch encoder and feature dimension."""
    from threads_search.atlas.store import open_atlas

    with open_atlas(atlas, read_only=True) as opened:
        rows = opened.sql("SELECT slide_id, patch_encoder FROM slides ORDER BY slide_id").fetchall()
        return rows, opened.meta("patch_encoder"), opened.meta("feature_dim")


@pytest.mark.parametrize("mag", ["20x", "20.0x"])
@pytest.mark.parametrize("given", ["job", "magnification"])
def test_a_job_folder_of_one_encoder_is_ingested_under_its_canonical_name(tmp_path, rng, mag, given):
    job = write_job(tmp_path / "job", rng, {"resnet50": 32}, mag=mag)
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slides", atlas, job if given == "job" else job / f"{mag}_256px_0px_overlap")
    assert "3 added" in result.stdout
    rows, encoder, dim = slide_rows(atlas)
    # TRIDENT's `resnet50` is this project's `resnet50_trunc`; patches/ and the rest were not read
    assert rows == [(slide, "resnet50_trunc") for slide in SLIDES]
    assert (encoder, dim) == ("resnet50_trunc", "32")
    again = run("ingest", "slides", atlas, job, "--encoder", "resnet50_trunc")
    assert "0 added" in again.stdout and "3 unchanged" in again.stdout


def test_two_encoders_need_a_choice_and_encoder_picks_one_by_any_alias(tmp_path, rng):
    job = write_job(tmp_path / "job", rng, {"conch_v15": 24, "uni_v2": 40}, encoder_attr=True)
    atlas = tmp_path / "atlas"
    run("init", atlas)
    message = refused("ingest", "slides", atlas, job)
    assert str(job) in message
    assert "conch_v15, uni_v2" in message and "--encoder NAME" in message
    assert slide_rows(atlas) == ([], None, None)  # nothing written
    missing = refused("ingest", "slides", atlas, job, "--encoder", "virchow2")
    assert "--encoder 'virchow2'" in missing and "conch_v15, uni_v2" in missing
    run("ingest", "slides", atlas, job, "--encoder", "uni2_h")
    rows, encoder, dim = slide_rows(atlas)
    assert [r[0] for r in rows] == list(SLIDES) and (encoder, dim) == ("uni2_h", "40")
    assert {r[1] for r in rows} == {"uni_v2"}  # as the files name it; the same encoder as uni2_h


def test_a_folder_name_disagreeing_with_the_files_or_encoder_is_refused(tmp_path, rng):
    job = write_job(tmp_path / "job", rng, {"uni_v1": 16})
    stray = job / "20x_256px_0px_overlap" / "features_uni_v1" / f"{SLIDES[1]}.h5"
    write_trident(stray, rng.normal(size=(5, 16)).astype(np.float32), encoder="conch_v15")
    atlas = tmp_path / "atlas"
    run("init", atlas)
    message = refused("ingest", "slides", atlas, job)
    assert f"{SLIDES[1]}.h5: names patch encoder 'conch_v15', not 'uni_v1' of its folder features_uni_v1" in message
    assert slide_rows(atlas) == ([], None, None)
    write_trident(stray, rng.normal(size=(5, 16)).astype(np.float32), encoder=None)
    declared = refused("ingest", "slides", atlas, job / "20x_256px_0px_overlap" / "features_uni_v1", "--encoder", "conch_v15")
    assert "is in features_uni_v1, features of 'uni_v1', not of the declared --encoder 'conch_v15'" in declared
    assert slide_rows(atlas) == ([], None, None)


def test_the_same_encoder_in_two_magnification_folders_needs_one_folder(tmp_path, rng):
    job = write_job(tmp_path / "job", rng, {"uni_v1": 16}, mag="20x")
    write_job(tmp_path / "other", rng, {"uni": 16}, mag="40x")
    (tmp_path / "other" / "40x_256px_0px_overlap").rename(job / "40x_256px_0px_overlap")
    atlas = tmp_path / "atlas"
    run("init", atlas)
    message = refused("ingest", "slides", atlas, job)
    assert "20x_256px_0px_overlap/features_uni_v1, 40x_256px_0px_overlap/features_uni" in message
    run("ingest", "slides", atlas, job / "40x_256px_0px_overlap")
    assert slide_rows(atlas)[1] == "uni_v1"


def test_a_job_folder_without_features_says_what_it_holds(tmp_path, rng):
    job = write_job(tmp_path / "job", rng, {})
    atlas = tmp_path / "atlas"
    run("init", atlas)
    message = refused("ingest", "slides", atlas, job)
    assert "a TRIDENT folder without features_<encoder> folders of patch features (it holds patches, visualization)" in message


def test_slide_features_of_a_job_folder_are_ingested_as_slide_embeddings(tmp_path, rng):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import model_summaries

    job = write_job(tmp_path / "job", rng, {"conch_v15": 24})
    patching = job / "20x_256px_0px_overlap"
    write_trident_slide_features(patching / "slide_features_titan", rng.normal(size=(3, 12)), list(SLIDES))
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slide-embeddings", atlas, job)  # the features_conch_v15 bags are not read
    assert "3 added" in result.stdout and "(titan, model" in result.stdout
    write_trident_slide_features(patching / "slide_features_prism", rng.normal(size=(3, 20)), list(SLIDES))
    message = refused("ingest", "slide-embeddings", atlas, job)
    assert "slide embeddings of several encoders (prism, titan)" in message and "--encoder NAME" in message
    run("ingest", "slide-embeddings", atlas, patching, "--encoder", "prism")
    with open_atlas(atlas, read_only=True) as opened:
        dims = {m["provenance"]["encoder"]: m["provenance"]["dim"] for m in model_summaries(opened)}
        slides = [r[0] for r in opened.sql("SELECT item_id FROM items WHERE modality = 'slides' ORDER BY 1").fetchall()]
        bags = opened.sql("SELECT count(*) FROM slides").fetchone()[0]
    assert dims == {"titan": 12, "prism": 20} and slides == list(SLIDES) and bags == 0


def test_plain_folders_and_globs_are_expanded_as_before(tmp_path, rng):
    from threads_search.errors import InputError
    from threads_search.readers.patch_features import expand_feature_paths
    from threads_search.readers.slide_embeddings import expand_embedding_paths

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("b.h5", "a.pt", "notes.txt", "x.npy"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in expand_feature_paths([folder])] == ["a.pt", "b.h5"]
    assert [p.name for p in expand_feature_paths([str(folder / "*")])] == ["a.pt", "b.h5"]  # others skipped
    assert [p.name for p in expand_embedding_paths([folder])] == ["b.h5", "x.npy"]
    with pytest.raises(InputError, match=r"a\.pt: not a slide-embedding file"):
        expand_embedding_paths([str(folder / "*")])  # a glob's other files are refused here
    (folder / "old.pkl").write_bytes(b"")
    with pytest.raises(InputError, match="never unpickled"):
        expand_embedding_paths([folder])
    with pytest.raises(InputError, match=r"notes\.txt: not a feature file"):
        expand_feature_paths([folder / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no feature files found"):
        expand_feature_paths([tmp_path / "empty"])
    with pytest.raises(InputError, match="the pattern matches no file"):
        expand_feature_paths([str(folder / "nothing*.h5")])


def test_cli_a_trident_job_is_searched_end_to_end_with_a_feather_checkpoint(tmp_path, rng):
    """init -> ingest slides JOB -> embed --model feather --weights -> index -> search, CLI only."""
    dim = 768  # FEATHER's CONCH v1.5 input
    slides = [f"P{p}-S{s}" for p in range(4) for s in range(2)] + ["P9-S0"]
    bags = {slide: (rng.normal(size=(int(rng.integers(12, 30)), dim)) + rng.normal(size=dim)).astype(np.float32)
            for slide in slides}
    query = bags["P0-S0"]
    bags["P0-S1"] = query + rng.normal(scale=1e-3, size=query.shape).astype(np.float32)  # same patient
    bags["P9-S0"] = query + rng.normal(scale=1e-2, size=query.shape).astype(np.float32)  # another patient
    job = write_job(tmp_path / "job", rng, {"conch_v15": dim}, slides=tuple(slides), bags=bags)
    patients = write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id"], [[s, s.split("-")[0]] for s in slides])
    weights = save_safetensors(tmp_path / "feather.safetensors", feather_state(in_dim=dim, seed=5))
    atlas = tmp_path / "atlas"

    run("init", atlas)
    assert f"{len(slides)} added" in run("ingest", "slides", atlas, job, "--metadata", patients).stdout
    embedded = run("embed", atlas, "--model", "feather", "--weights", weights, "--quiet")
    assert f"embedded {len(slides)} slides" in embedded.output
    run("index", atlas, "--model", "feather")
    found = json.loads(run("search", atlas, "--slide-id", "P0-S0", "--model", "feather", "-k", "4",
                           "--format", "json").stdout)
    hits = found["hits"]
    assert len(hits) == 4
    assert all(h["patient_id"] != "P0" for h in hits)  # the query's own patient is left out by default
    assert hits[0]["id"] == "P9-S0" and hits[1]["score"] < 0.9  # the near-duplicate, well ahead of the rest
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    with_own = json.loads(run("search", atlas, "--slide-id", "P0-S0", "--model", "feather", "-k", "2",
                              "--format", "json", "--include-same-patient").stdout)["hits"]
    assert {h["id"] for h in with_own} == {"P0-S1", "P9-S0"} and all(h["id"] != "P0-S0" for h in with_own)
