"""Which model `search` uses: a new `train` does not become the default before it is embedded and
indexed, the choice is said on stderr, and a model without an index gets one message naming the
commands it still needs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@dataclass
class TwoModels:
    path: Path
    older: str  # trained first, embedded and indexed
    newer: str  # trained second, neither embedded nor indexed
    slide_id: str


def _train(path: Path, seed: int) -> str:
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id

    result = cli("train", path, "--epochs", 1, "--patches-per-slide", 64, "--seed", seed, "--quiet")
    assert result.exit_code == 0, result.output
    with open_atlas(path, read_only=True) as atlas:
        return resolve_model_id(atlas, trained_only=True)  # the newest trained model: this one


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> TwoModels:
    from conftest import ingest_quick_cohort

    path, cohort = ingest_quick_cohort(tmp_path_factory.mktemp("default"))
    older = _train(path, seed=0)
    for command in ("embed", "index"):
        result = cli(command, path, "--model", older, "--quiet")
        assert result.exit_code == 0, result.output
    newer = _train(path, seed=1)
    assert newer != older
    slide_id = sorted(p.stem for p in cohort.features_dir.glob("*.h5"))[0]
    return TwoModels(path, older, newer, slide_id)


def test_search_uses_the_newest_model_with_an_index_and_says_which(two_models):
    result = cli("search", two_models.path, "--slide-id", two_models.slide_id, "-k", 3, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query"]["model_id"] == two_models.older
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"searching with model {two_models.older} (threads-abmil-cpu, slides index built 20")
    root = two_models.path
    assert line.endswith(f"; the newer model {two_models.newer} is not searchable yet: run "
                         f"`threads-search embed {root} --model {two_models.newer}` then "
                         f"`threads-search index {root} --model {two_models.newer}`")


def test_a_model_without_embeddings_or_index_is_one_message_naming_both_commands(two_models):
    result = cli("search", two_models.path, "--slide-id", two_models.slide_id, "--model", two_models.newer[:8])
    assert result.exit_code != 0
    root, newer = two_models.path, two_models.newer
    assert result.stderr.strip().splitlines() == [
        f"error: model {newer} has no slides index: run `threads-search embed {root} --model {newer}` then "
        f"`threads-search index {root} --model {newer}`"]


def test_embedded_but_not_indexed_names_only_index_and_embed_keeps_the_newest_trained(two_models, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import embedded_models

    copy = tmp_path / "atlas"
    shutil.copytree(two_models.path, copy)
    result = cli("embed", copy, "--quiet")  # no --model: the newest trained model
    assert result.exit_code == 0, result.output
    with open_atlas(copy, read_only=True) as atlas:
        assert two_models.newer in embedded_models(atlas)
    searched = cli("search", copy, "--slide-id", two_models.slide_id, "--model", two_models.newer)
    assert searched.exit_code != 0
    assert searched.stderr.strip().splitlines() == [
        f"error: model {two_models.newer} has no slides index: run `threads-search index {copy} --model "
        f"{two_models.newer}`"]
    assert cli("index", copy, "--quiet").exit_code == 0  # no --model: the newest trained model again
    result = cli("search", copy, "--slide-id", two_models.slide_id, "-k", 3, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query"]["model_id"] == two_models.newer
    assert result.stderr.strip().splitlines()[0].endswith("UTC)")  # nothing newer passed over
    # A prototype query searches the space its set was built in, not the newest indexed model.
    built = cli("prototypes", copy, "--label", "subtype", "--modality", "slides", "--name", "old", "--model",
                two_models.older)
    assert built.exit_code == 0, built.output
    subtype = built.stdout.splitlines()[3].split()[0]
    result = cli("search", copy, "--prototype", f"old:{subtype}", "-k", 3, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query"]["model_id"] == two_models.older


def test_no_indexed_model_at_all_is_one_message(two_models, tmp_path):
    from conftest import ingest_quick_cohort

    path, cohort = ingest_quick_cohort(tmp_path)
    model_id = _train(path, seed=2)
    slide_id = sorted(p.stem for p in cohort.features_dir.glob("*.h5"))[0]
    result = cli("search", path, "--slide-id", slide_id)
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        f"error: model {model_id} has no slides index (no model of the atlas has one yet): run "
        f"`threads-search embed {path} --model {model_id}` then `threads-search index {path} --model {model_id}`"]


def test_the_service_default_model_is_the_searchable_one(two_models):
    from threads_search.atlas.search_default import resolve_search_model
    from threads_search.atlas.store import open_atlas
    from threads_search.service.item_routes import _summary

    with open_atlas(two_models.path, read_only=True) as atlas:
        assert _summary(atlas)["default_model"] == two_models.older
        chosen = resolve_search_model(atlas, None, "slides")
        assert (chosen.model_id, chosen.defaulted, chosen.passed_over) == (two_models.older, True, (two_models.newer,))
        assert not resolve_search_model(atlas, two_models.older[:6], "slides").defaulted
