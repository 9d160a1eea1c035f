"""embed / index / train jobs over an atlas: resume after interruption, incremental indexing, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import store_fitted_baseline
from threads_search.cli.app import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from threads_search.synthetic.cohort import generate_cohort
    from threads_search.synthetic.config import quick_config

    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", quick_config(seed=5))


def new_atlas(tmp_path: Path, cohort, slides=None) -> Path:
    path = tmp_path / "atlas"
    assert cli("init", path).exit_code == 0
    assert cli("ingest", "slides", path, *(slides or [cohort.features_dir]), "--metadata", cohort.slides_csv).exit_code == 0
    assert cli("ingest", "expression", path, cohort.expression_csv, "--metadata", cohort.samples_csv).exit_code == 0
    return path


def test_embed_resumes_after_an_interruption(tmp_path, cohort, monkeypatch):
    from threads_search.jobs import embed as embed_job
    from threads_search.atlas import embeddings as embedding_store
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings

    path = new_atlas(tmp_path, cohort)
    model_id = store_fitted_baseline(path)
    monkeypatch.setattr(embed_job, "SLIDES_PER_PART", 10)
    real_write = embedding_store.write_part
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third part
        return real_write(*args, **kwargs)

    monkeypatch.setattr(embed_job, "write_part", failing_write)
    with open_atlas(path) as atlas, pytest.raises(KeyboardInterrupt):
        embed_job.embed_atlas(atlas, model_id)
    with open_atlas(path) as atlas:
        ids, _ = load_embeddings(atlas, model_id, "slides")
        assert len(ids) == 20  # two finished parts survive
    monkeypatch.setattr(embed_job, "write_part", real_write)
    with open_atlas(path) as atlas:
        report = embed_job.embed_atlas(atlas, model_id)
        n_slides = atlas.sql("SELECT count(*) FROM slides").fetchone()[0]
        ids, vectors = load_embeddings(atlas, model_id, "slides")
    assert report.skipped["slides"] == 20 and report.embedded["slides"] == n_slides - 20
    assert len(ids) == n_slides == len(np.unique(ids))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = cli("embed", path, "--model", model_id)
    assert again.exit_code == 0 and f"0 slides (+{n_slides} already)" in again.output


def test_index_takes_new_items_incrementally(tmp_path, cohort):
    first_half = sorted(cohort.features_dir.glob("*.h5"))[:30]
    path = new_atlas(tmp_path, cohort, slides=first_half)
    model_id = store_fitted_baseline(path)
    assert cli("embed", path, "--model", model_id).exit_code == 0
    built = cli("index", path, "--model", model_id)
    assert built.exit_code == 0 and "built" in built.output
    assert cli("ingest", "slides", path, cohort.features_dir, "--metadata", cohort.slides_csv).exit_code == 0
    assert cli("embed", path, "--model", model_id).exit_code == 0
    grown = cli("index", path, "--model", model_id)
    assert grown.exit_code == 0, grown.output
    n_total = len(list(cohort.features_dir.glob("*.h5")))
    assert "added" in grown.output
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.index import open_index

    with open_atlas(path, read_only=True) as atlas:
        index = open_index(atlas, model_id, "slides")
        assert index.count == n_total
        assert atlas.sql("SELECT n_vectors FROM indexes WHERE modality = 'slides'").fetchone()[0] == n_total
    unchanged = cli("index", path, "--model", model_id)
    assert "unchanged" in unchanged.output


def test_train_refuses_what_it_cannot_train_on(tmp_path, cohort):
    path = new_atlas(tmp_path, cohort)
    nothing = cli("train", path, "--where", "cohort = 'nowhere'", "--quiet")
    assert nothing.exit_code == 2 and "no slides match" in nothing.output
    from threads_search.atlas.store import open_atlas

    with open_atlas(path) as atlas:
        patient = atlas.sql("SELECT patient_id FROM items WHERE modality = 'slides' AND patient_id IN "
                            "(SELECT patient_id FROM items WHERE modality = 'expression') LIMIT 1").fetchone()[0]
    single = cli("train", path, "--where", f"patient_id = '{patient}'", "--quiet", "--epochs", "1")
    assert single.exit_code == 2 and "need at least 2 patients with both a slide and a profile, found 1" in single.output
    import torch

    if not torch.cuda.is_available():
        cuda = cli("train", path, "--device", "cuda", "--quiet", "--epochs", "1")
        assert cuda.exit_code == 2 and "cuda" in cuda.output.lower()
    bad_sql = cli("train", path, "--where", "cohort ==", "--quiet")
    assert bad_sql.exit_code == 2 and "--where" in bad_sql.output


def test_train_from_the_cli_stores_the_model_and_a_copy(tmp_path, cohort):
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.checkpoint import load_model, read_model_id

    path = new_atlas(tmp_path, cohort)
    result = cli("train", path, "--where", "cohort = 'train'", "--epochs", 2, "--patches-per-slide", 64,
                 "--batch-size", 8, "--quiet", "--out", tmp_path / "checkpoint")
    assert result.exit_code == 0, result.output
    model_id = result.output.split("trained model ")[1].split()[0]
    assert read_model_id(tmp_path / "checkpoint") == model_id
    assert {p.name for p in (tmp_path / "checkpoint").iterdir()} == {"config.json", "model.safetensors"}
    with open_atlas(path, read_only=True) as atlas:
        recipes = dict(atlas.sql("SELECT recipe, model_id FROM models").fetchall())
    assert recipes["threads-abmil-cpu"] == model_id and "meanpool" in recipes
    assert load_model(tmp_path / "checkpoint").in_dim == 768


@pytest.mark.parametrize("no_baseline", [False, True])
def test_embed_without_a_model_also_embeds_the_baseline(tmp_path, cohort, no_baseline):
    """`embed ATLAS` embeds the newest trained model and the mean-pooling baseline beside it (so
    `eval` has its baseline column); `--no-baseline` embeds the model only."""
    import torch

    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.encoders.registry import create_model

    path = new_atlas(tmp_path, cohort)
    baseline_id = store_fitted_baseline(path)
    with open_atlas(path) as atlas:
        torch.manual_seed(0)
        model_id = store_model(atlas, create_model("threads-abmil-cpu", in_dim=int(atlas.meta("feature_dim")),
                                                   patch_encoder=atlas.meta("patch_encoder")))
    result = cli("embed", path, *(["--no-baseline"] if no_baseline else []))
    assert result.exit_code == 0, result.output
    with open_atlas(path, read_only=True) as atlas:
        n_slides = atlas.sql("SELECT count(*) FROM slides").fetchone()[0]
        model_ids, _ = load_embeddings(atlas, model_id, "slides")
        baseline_ids, _ = load_embeddings(atlas, baseline_id, "slides")
    assert len(model_ids) == n_slides and f"model {model_id}: embedded {n_slides} slides" in result.output
    if no_baseline:
        assert len(baseline_ids) == 0 and "baseline" not in result.output
    else:
        assert len(baseline_ids) == n_slides and f"baseline {baseline_id}: embedded {n_slides} slides" in result.output
