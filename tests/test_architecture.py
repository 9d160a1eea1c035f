"""The layer contract of docs/ARCHITECTURE.md, checked over the import graph of the source.

Stages import only stages on lower layers; `encoders` never imports faiss or duckdb; `indexer`
never imports torch or duckdb; nothing below the CLI imports it; SQL is written only under
`threads_search/atlas/`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> import name (pyproject's package-dir mapping).
PACKAGES = {"threads_search": "threads_search", "encoders": "threads_search.encoders",
            "indexer": "threads_search.indexer", "cli": "threads_search.cli"}
# Lower layers first; a stage may import its own modules and stages of lower layers only.
LAYERS = [
    {"", "errors", "atomic", "lru"},
    {"encoders", "indexer", "evaluation", "readers"},
    {"wsi", "synthetic"},
    {"atlas"},
    {"ingest", "training"},
    {"jobs"},
    {"search"},
    {"demo", "api", "service", "distributed"},
    {"cli"},
]
FORBIDDEN_THIRD_PARTY = {"encoders": {"faiss", "duckdb"}, "indexer": {"torch", "duckdb"},
                         "evaluation": {"torch", "faiss", "duckdb"}, "readers": {"faiss", "duckdb"}}
# The optional `ray` extra is imported by `distributed` only (and there inside functions).
OPTIONAL_ONLY_IN = {"ray": "distributed"}
SQL_STATEMENT = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|SEQUENCE|VIEW)"
                           r"|ALTER\s+TABLE|DROP\s+TABLE|ATTACH\s|COPY\s.+\sTO)\b", re.S)
SQL_CALLS = {"sql", "execute", "executemany", "register", "unregister"}


def _modules() -> list[tuple[Path, str]]:
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found.append((path, ".".join(parts)))
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(stage: str) -> int:
    for level, stages in enumerate(LAYERS):
        if stage in stages:
            return level
    raise AssertionError(f"stage '{stage}' is on no layer of tests/test_architecture.py; place it")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


MODULES = _modules()


def test_every_module_is_on_a_layer():
    for _, module in MODULES:
        _layer(_stage(module))


def _layer_violations(path: Path, module: str) -> list[str]:
    stage = _stage(module)
    wrong = []
    for line, imported in _imports(path):
        top = imported.split(".")[0]
        if top in FORBIDDEN_THIRD_PARTY.get(stage, ()):
            wrong.append(f"{path.name}:{line} imports {imported} (never in {stage})")
        if top in OPTIONAL_ONLY_IN and stage != OPTIONAL_ONLY_IN[top]:
            wrong.append(f"{path.name}:{line} imports {imported} (an optional extra: only in {OPTIONAL_ONLY_IN[top]})")
        if top != "threads_search":
            continue
        target = _stage(imported)
        if target != stage and _layer(target) >= _layer(stage):
            wrong.append(f"{path.name}:{line} imports {imported} ({stage} may not import {target or 'the package'})")
    return wrong


@pytest.mark.parametrize("path, module", MODULES, ids=[m for _, m in MODULES])
def test_imports_follow_the_layers(path, module):
    wrong = _layer_violations(path, module)
    assert not wrong, f"{path.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path, module", [(p, m) for p, m in MODULES if _stage(m) != "atlas"],
                         ids=[m for p, m in MODULES if _stage(m) != "atlas"])
def test_sql_is_written_only_in_the_atlas_store(path, module):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_STATEMENT.search(node.value):
            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} SQL text {node.value[:60]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}() call")
    assert not wrong, "\n".join(wrong)


def test_the_contract_catches_a_wrong_import(tmp_path):
    """The checks themselves fail on a violation (a check that cannot fail proves nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import faiss\nfrom threads_search.cli.app import app\nq = 'SELECT vid FROM items'\nx.sql(q)\n")
    imports = [name for _, name in _imports(bad)]
    assert "faiss" in imports and "threads_search.cli.app" in imports
    assert _layer(_stage("threads_search.cli.app")) > _layer("encoders")
    assert SQL_STATEMENT.search("SELECT vid FROM items") and not SQL_STATEMENT.search("select the queries from the atlas")


def test_the_core_runs_without_ray():
    """Importing the CLI, the API, the service and the distributed package loads no ray module
    (ray is imported inside the functions that run on a cluster)."""
    import subprocess
    import sys

    code = ("import sys, threads_search.cli.app, threads_search.api, threads_search.service.app, "
            "threads_search.distributed.embed, threads_search.distributed.shards, threads_search.distributed.serving; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded


def test_the_contract_catches_ray_outside_distributed(tmp_path):
    """ray imported inside a function of the search stage is a violation; in distributed it is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray.data\n")
    assert any("optional extra" in line for line in _layer_violations(bad, "threads_search.search.bad"))
    assert _layer_violations(bad, "threads_search.distributed.bad") == []


def test_ray_options_without_the_extra_are_one_line(tmp_path):
    """With ray not importable, `--ray` exits 2 naming the extra to install, before the atlas is touched."""
    import os
    import subprocess
    import sys

    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "ray.py").write_text("raise ModuleNotFoundError('No module named ray', name='ray')\n")
    env = dict(os.environ, PYTHONPATH=str(hidden))
    command = [sys.executable, "-c", "import sys; from threads_search.cli.app import main; sys.argv[0] = 'threads-search'; main()",
               "embed", str(tmp_path / "no-atlas"), "--ray", "auto"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --ray needs Ray, which is not installed; install the extra: "
                                                "pip install -c constraints.txt 'threads-search[ray]'"]
    assert not (tmp_path / "no-atlas").exists()


@pytest.mark.parametrize("command, threads", [("search", "1"), ("info", "1"), ("train", None)])
def test_one_query_commands_start_numpy_with_one_blas_thread(command, threads):
    """`search` and `info` set OPENBLAS_NUM_THREADS=1 before numpy loads (its thread team costs
    more to start than they use); other commands keep the environment as it is."""
    code = textwrap.dedent(f"""
        import os, sys
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
        from threads_search.cli.app import single_threaded_blas_for
        single_threaded_blas_for(["threads-search", "{command}"])
        import numpy
        from threadpoolctl import threadpool_info
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas" and "numpy" in p["filepath"]]
        print(os.environ.get("OPENBLAS_NUM_THREADS"), blas)
    """)
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert printed[0] == str(threads)
    if threads == "1":
        assert printed[1].strip() == "[1]"
