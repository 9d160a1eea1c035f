"""Hostile filters through every option that takes one, and through the Python API.

Each must be refused with exit code 2 and one `error:` line (no traceback), leave every atlas
file byte-identical, create no file anywhere under the test's folder, and echo no file content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()
SECRET = "SECRET-7f3a9c-NOT-FOR-OUTPUT"

# {secret} is the path of a file holding SECRET; {here} the test folder.
HOSTILE = [
    "1=1); DROP TABLE items; SELECT (1",
    "1=1; ATTACH '{here}/evil.duckdb' AS evil; CREATE TABLE evil.stolen AS SELECT * FROM items",
    "1=1) OR EXISTS (SELECT 1); ATTACH '{here}/evil.duckdb' AS evil; SELECT (1",
    "1=1; COPY items TO '{here}/leak.csv'",
    "EXISTS (SELECT * FROM read_csv('{secret}'))",
    "cohort = 'heldout') OR (1=1",
    "CAST((SELECT content FROM read_text('{secret}')) AS INTEGER) = 1",
    "read_text('{secret}') IS NOT NULL",
    "1=1; PRAGMA database_list",
    "1=1; INSTALL httpfs; LOAD httpfs",
    "1=1; SET enable_external_access = true",
    "vid IN (SELECT vid FROM read_parquet('{here}/*.parquet'))",
    "EXISTS (SELECT * FROM glob('{here}/*'))",
    "getenv('HOME') = '/root'",
    "current_setting('enable_external_access') = 'false'",
    "EXISTS (SELECT * FROM models)",
    "vid IN (SELECT vid FROM embeddings)",
    "((cohort = 'heldout'",
    "cohort = 'heldout' /* unterminated",
    "1=1 -- hidden\n; DROP TABLE items",
    "cohort = 'heldout'; SELECT 1",
    "1=1 UNION SELECT vid, modality FROM items",
    "1=1 ORDER BY 1",
    "1=1 LIMIT 1",
    "COLUMNS(*) IS NOT NULL",
    "cohort = ?",
    "count(*) > 0",
    "row_number() OVER () = 1",
    "list_filter([1], x -> x > 0) = [1]",
    "main.items.cohort = 'heldout'",
    "query('SELECT 1') IS NOT NULL",
    "CAST(cohort AS main.evil_type) = 'x'",
]

# (command, options before the filter, the filter's option); each needs the others to be valid.
OPTIONS = [
    (["search"], ["--slide-id", "{slide}"], "--where"),
    (["eval"], ["--label", "subtype", "--database", "cohort = 'heldout'", "--bootstrap", "0"], "--queries"),
    (["eval"], ["--label", "subtype", "--queries", "cohort = 'heldout'", "--bootstrap", "0"], "--database"),
    (["train"], ["--epochs", "1"], "--where"),
    (["prototypes"], ["--label", "subtype", "--modality", "slides", "--name", "p2"], "--where"),
    (["classify"], ["--prototypes", "p"], "--where"),
    (["fewshot"], ["--label", "subtype", "--test", "cohort = 'heldout'"], "--train"),
    (["fewshot"], ["--label", "subtype", "--train", "cohort = 'train'"], "--test"),
    (["remove"], [], "--where"),
]


def _fill(text: str, context: dict) -> str:
    for key, value in context.items():
        text = text.replace("{" + key + "}", str(value))
    return text


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An atlas with a model, embeddings, indexes and a prototype set; a secret file beside it."""
    from conftest import ingest_quick_cohort, store_fitted_baseline
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas
    from threads_search.jobs.index import build_atlas_indexes
    from threads_search.search.prototypes import build_prototypes

    root = tmp_path_factory.mktemp("hostile")
    path, _ = ingest_quick_cohort(root)
    model_id = store_fitted_baseline(path, "cohort = 'train'")
    with open_atlas(path) as opened:
        embed_atlas(opened, model_id)
        build_atlas_indexes(opened, model_id)
        build_prototypes(opened, model_id, "subtype", "slides", name="p")
        slide = opened.sql("SELECT min(item_id) FROM items WHERE modality = 'slides'").fetchone()[0]
    secret = root / "secret.csv"
    secret.write_text(f"{SECRET}\n1\n")
    return {"root": root, "atlas": path, "slide": slide, "secret": secret, "here": root}


def _digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _all_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


@pytest.mark.parametrize("command, before, option", OPTIONS, ids=[f"{c[0]} {o}" for c, _, o in OPTIONS])
def test_hostile_filters_are_refused_in_one_line_and_change_nothing(built, monkeypatch, command, before, option):
    monkeypatch.chdir(built["root"])
    atlas = built["atlas"]
    context = {"slide": built["slide"], "secret": built["secret"], "here": built["here"]}
    files_before, digests_before = _all_files(built["root"]), _digest_tree(atlas)
    for hostile in HOSTILE:
        text = _fill(hostile, context)
        args = [*command, str(atlas), *(_fill(a, context) for a in before), option, text]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (text, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {option} "), (text, result.stderr)
        assert "Traceback" not in result.output and SECRET not in result.output, (text, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (text, result.exception)
    assert _digest_tree(atlas) == digests_before
    assert _all_files(built["root"]) == files_before


def test_the_python_api_refuses_the_same_filters(built, monkeypatch):
    from threads_search.api import (Query, SearchOptions, build_prototypes, classify_slides, evaluate_atlas,
                                    fewshot_atlas, open_atlas, search_atlas)
    from threads_search.errors import InputError
    from threads_search.jobs.remove import remove_items
    from threads_search.training.job import paired_dataset

    monkeypatch.chdir(built["root"])
    atlas_path = built["atlas"]
    context = {"secret": built["secret"], "here": built["here"]}
    files_before, digests_before = _all_files(built["root"]), _digest_tree(atlas_path)
    calls = [
        lambda atlas, f: search_atlas(atlas, Query(slide_id=built["slide"]), SearchOptions(where=f)),
        lambda atlas, f: evaluate_atlas(atlas, "subtype", f, "cohort = 'heldout'", n_bootstrap=0),
        lambda atlas, f: build_prototypes(atlas, atlas.sql("SELECT model_id FROM models").fetchone()[0], "subtype",
                                          "slides", where_sql=f, name="p3"),
        lambda atlas, f: classify_slides(atlas, "p", where_sql=f),
        lambda atlas, f: fewshot_atlas(atlas, "subtype", f, "cohort = 'heldout'"),
        lambda atlas, f: paired_dataset(atlas, f),
        lambda atlas, f: remove_items(atlas, where_sql=f),
    ]
    with open_atlas(atlas_path) as atlas:
        for hostile in HOSTILE:
            text = _fill(hostile, context)
            for call in calls:
                with pytest.raises(InputError) as refused:
                    call(atlas, text)
                message = str(refused.value)
                assert "\n" not in message and SECRET not in message, (text, message)
    assert _digest_tree(atlas_path) == digests_before
    assert _all_files(built["root"]) == files_before


@pytest.mark.parametrize("text, expected", [
    ("cohort = 'heldout' AND site <> 'site3'", None),
    ("lower(subtype) LIKE 'clear%' OR age BETWEEN 40 AND 50", None),
    ("stage IN ('I', 'II') AND NOT (sex = 'male') AND age IS NOT NULL", None),
    ("CASE WHEN age > 60 THEN 'old' ELSE 'young' END = 'old'", None),
    ("CAST(age AS DOUBLE) / 2 > 25", None),
])
def test_ordinary_filters_select_what_duckdb_would(built, text, expected):
    """A valid filter selects exactly the rows DuckDB itself selects with the same expression."""
    import duckdb

    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.where import matching_vids

    with open_atlas(built["atlas"], read_only=True) as atlas:
        got = matching_vids(atlas, "slides", text).tolist()
        items = atlas.arrow("SELECT * FROM items")
    reference = duckdb.connect()
    reference.register("items", items)
    want = [r[0] for r in reference.execute(f"SELECT vid FROM items WHERE modality = 'slides' AND ({text}) ORDER BY vid").fetchall()]
    assert got == want and 0 < len(got)


def test_a_refusal_names_the_option_the_reason_and_the_columns(built):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.where import matching_vids
    from threads_search.errors import InputError

    with open_atlas(built["atlas"], read_only=True) as atlas:
        with pytest.raises(InputError) as refused:
            matching_vids(atlas, "slides", "EXISTS (SELECT * FROM models)", "--queries")
    message = str(refused.value)
    assert message.startswith('--queries "EXISTS (SELECT * FROM models)": subqueries are not allowed (columns: ')
    assert "cohort" in message and "subtype" in message
