"""Crash harness: SIGKILL every writing command at every write boundary and at random times,
then re-run it, and compare the final atlas with an uninterrupted run.

For each writing command (on a copy of a prepared atlas):
  1. reference: run it uninterrupted; record the atlas's state (items, vectors per model,
     indexes, search results, prototypes).
  2. boundary kills: run it with THREADS_SEARCH_CRASH_AT=n for n = 1, 2, ... (the n-th write
     boundary: before/after each rename and commit) until it finishes without reaching n.
  3. random kills: run it and SIGKILL it after a uniform random delay within the reference time.
After each kill: the atlas must open for readers; the re-run must succeed; its final state must
equal the reference; and `check` must find nothing (no leftovers, no damaged records).

    python benchmarks/crash_harness.py --random 50            # every command, full counts
    python benchmarks/crash_harness.py --commands index --random 5 --max-boundaries 10

Writes benchmarks/results/crash_harness.json. tests/test_crash.py runs a bounded sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CLI = [sys.executable, "-c", "from threads_search.cli.app import main; main()"]


@dataclass
class Scenario:
    """A writing command and the atlas state it starts from."""

    name: str
    base: str  # prepared state the command runs on (a key of `prepare`)
    args: list[str]  # arguments after the atlas path; {cohort} is replaced


SCENARIOS = [
    Scenario("ingest slides", "empty", ["ingest", "slides", "{atlas}", "{cohort}/features", "--metadata", "{cohort}/slides.csv"]),
    Scenario("ingest expression", "slides", ["ingest", "expression", "{atlas}", "{cohort}/expression.csv",
                                             "--metadata", "{cohort}/samples.csv"]),
    Scenario("ingest mutations", "slides", ["ingest", "mutations", "{atlas}", "{cohort}/mutations.maf",
                                            "--metadata", "{cohort}/samples.csv"]),
    Scenario("train", "ingested", ["train", "{atlas}", "--where", "cohort = 'train'", "--epochs", "2", "--seed", "0"]),
    Scenario("embed", "trained", ["embed", "{atlas}"]),
    Scenario("index", "embedded", ["index", "{atlas}"]),
    Scenario("index add", "indexed_grown", ["index", "{atlas}"]),
    Scenario("index rebuild", "indexed", ["index", "{atlas}", "--rebuild"]),
    Scenario("remove", "indexed", ["remove", "{atlas}", "--where", "site = 'site2'"]),
    Scenario("prototypes", "indexed", ["prototypes", "{atlas}", "--label", "subtype", "--modality", "slides"]),
]


def fresh_copy(source: Path, target: Path) -> None:
    """A copy of a prepared atlas whose files are new (mtime now): published generations are kept for
    RETAIN_SECONDS after they are written, and copies keeping old mtimes would expire in the middle of
    a trial, which `check` would then rightly report as leftovers the next writer has not yet removed."""
    shutil.copytree(source, target, symlinks=True, copy_function=shutil.copy)


def run_cli(args: list[str], env_extra: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, THREADS_SEARCH_LOCK_TIMEOUT="5", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=timeout)


def _ok(args: list[str]) -> None:
    result = run_cli(args)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()[-500:]}")


def prepare(work: Path) -> dict[str, Path]:
    """Prepared atlases, one per starting state, from one quick generated cohort."""
    from threads_search.synthetic.cohort import generate_cohort
    from threads_search.synthetic.config import quick_config

    cohort = work / "cohort"
    files = generate_cohort(cohort, quick_config(seed=5))
    states: dict[str, Path] = {}

    def snapshot(name: str, atlas: Path) -> None:
        states[name] = work / f"state-{name.replace(' ', '_')}"
        shutil.copytree(atlas, states[name], symlinks=True)

    atlas = work / "building"
    _ok(["init", str(atlas)])
    snapshot("empty", atlas)
    half = sorted(files.features_dir.glob("*.h5"))
    grown_later = [p for p in half if "S2-" in p.name]
    first = [p for p in half if p not in grown_later]
    _ok(["ingest", "slides", str(atlas), *map(str, first), "--metadata", str(files.slides_csv)])
    snapshot("slides", atlas)
    _ok(["ingest", "expression", str(atlas), str(files.expression_csv), "--metadata", str(files.samples_csv)])
    _ok(["ingest", "mutations", str(atlas), str(files.mutations_maf), "--metadata", str(files.samples_csv)])
    snapshot("ingested", atlas)
    _ok(["train", str(atlas), "--where", "cohort = 'train'", "--epochs", "2", "--seed", "0"])
    snapshot("trained", atlas)
    _ok(["embed", str(atlas)])
    snapshot("embedded", atlas)
    _ok(["index", str(atlas)])
    snapshot("indexed", atlas)
    _ok(["ingest", "slides", str(atlas), *map(str, grown_later), "--metadata", str(files.slides_csv)])
    _ok(["embed", str(atlas)])
    snapshot("indexed_grown", atlas)
    states["cohort"] = cohort
    return states


def atlas_state(path: Path) -> dict:
    """What an uninterrupted run and a killed-then-resumed run must agree on (vids excluded)."""
    from threads_search.atlas.embeddings import embedding_summaries, load_embeddings
    from threads_search.atlas.indexes import index_summaries
    from threads_search.atlas.items import item_table
    from threads_search.atlas.prototype_store import prototype_summaries
    from threads_search.atlas.schema import MODALITIES
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import list_models

    state: dict = {}
    with open_atlas(path, read_only=True) as atlas:
        columns = atlas.metadata_columns()
        for modality in MODALITIES:
            table = item_table(atlas, modality, columns=columns)
            state[f"items {modality}"] = sorted(zip(table.item_ids, table.patient_ids, *(table.values[c] for c in columns)))
        state["models"] = sorted(list_models(atlas))
        for model_id, _ in state["models"]:
            for modality in MODALITIES:
                ids, vectors = load_embeddings(atlas, model_id, modality)
                if ids.size:
                    table = item_table(atlas, modality, ids)
                    state[f"vectors {model_id} {modality}"] = {item: np.round(v, 5).tobytes().hex()[:32]
                                                               for item, v in zip(table.item_ids, vectors)}
        state["embedding counts"] = embedding_summaries(atlas)
        state["indexes"] = sorted((s["model_id"], s["modality"], s["kind"], s["vectors"]) for s in index_summaries(atlas))
        state["prototypes"] = prototype_summaries(atlas)
    state["search"] = _search(path) if state["indexes"] else None
    return state


def _search(path: Path) -> list:
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas
    from threads_search.atlas.items import item_table

    with open_atlas(path, read_only=True) as atlas:
        slides = item_table(atlas, "slides")
        if not slides.item_ids:
            return []
        result = search_atlas(atlas, Query(slide_id=min(slides.item_ids)), SearchOptions(k=5))
    return [(h["id"], round(h["score"], 4)) for h in result.hits]


def _check_clean(path: Path) -> list[str]:
    from threads_search.atlas.check import check_atlas

    return [f"{p.path}: {p.message}" for p in check_atlas(path).problems]


@dataclass
class Outcome:
    kills: int = 0
    unreadable: int = 0
    failed_resumes: int = 0
    different_final_states: int = 0
    leftovers_after_rerun: int = 0
    examples: list[str] = field(default_factory=list)

    def failures(self) -> int:
        return self.unreadable + self.failed_resumes + self.different_final_states + self.leftovers_after_rerun


def _trial(scenario: Scenario, states: dict, work: Path, reference: dict, outcome: Outcome, *, crash_at: int | None = None,
           delay: float | None = None) -> bool:
    """One kill and resume; False when the command finished before the kill point (no kill)."""
    atlas = work / "trial"
    shutil.rmtree(atlas, ignore_errors=True)
    fresh_copy(states[scenario.base], atlas)
    args = [a.format(atlas=atlas, cohort=states["cohort"]) for a in scenario.args]
    if crash_at is not None:
        result = run_cli(args, {"THREADS_SEARCH_CRASH_AT": str(crash_at)})
        if result.returncode == 0:
            return False
        if result.returncode != -signal.SIGKILL:
            outcome.failed_resumes += 1
            outcome.examples.append(f"{scenario.name} @{crash_at}: exit {result.returncode}: {result.stderr.strip()[-300:]}")
            return True
    else:
        env = dict(os.environ, THREADS_SEARCH_LOCK_TIMEOUT="5", OMP_NUM_THREADS="1")
        stderr_path = work / "trial-stderr.txt"  # a file, not a pipe: a full pipe would stall the command
        with open(stderr_path, "wb") as stderr_file:
            process = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=stderr_file, env=env)
        time.sleep(delay)
        if process.poll() is not None:
            if process.returncode != 0:  # an early failure is a failure, not a kill that came too late
                outcome.failed_resumes += 1
                stderr = stderr_path.read_text(errors="replace").strip()
                outcome.examples.append(f"{scenario.name} after {delay:.2f}s: exit {process.returncode} before the kill: "
                                        f"{stderr[-300:]}")
                return True
            return False
        process.send_signal(signal.SIGKILL)
        process.wait()
    outcome.kills += 1
    label = f"{scenario.name} {'@' + str(crash_at) if crash_at else f'after {delay:.2f}s'}"
    try:
        atlas_state(atlas)
    except Exception as error:  # noqa: BLE001 - any failure to read is what is counted
        outcome.unreadable += 1
        outcome.examples.append(f"{label}: unreadable after the kill: {str(error).splitlines()[0][:200]}")
    rerun = run_cli(args)
    if rerun.returncode != 0:
        outcome.failed_resumes += 1
        outcome.examples.append(f"{label}: re-run failed: {rerun.stderr.strip()[-300:]}")
        return True
    final = atlas_state(atlas)
    if final != reference:
        outcome.different_final_states += 1
        differing = [k for k in set(final) | set(reference) if final.get(k) != reference.get(k)]
        outcome.examples.append(f"{label}: final state differs in {sorted(differing)[:4]}")
    leftovers = _check_clean(atlas)
    if leftovers:
        outcome.leftovers_after_rerun += 1
        outcome.examples.append(f"{label}: after the re-run: {leftovers[:2]}")
    return True


def run_scenario(scenario: Scenario, states: dict, work: Path, n_random: int, max_boundaries: int,
                 seed: int = 0) -> dict:
    atlas = work / "reference"
    shutil.rmtree(atlas, ignore_errors=True)
    fresh_copy(states[scenario.base], atlas)
    started = time.perf_counter()
    _ok([a.format(atlas=atlas, cohort=states["cohort"]) for a in scenario.args])
    seconds = time.perf_counter() - started
    reference = atlas_state(atlas)
    boundary, randoms = Outcome(), Outcome()
    n = 0
    while n < max_boundaries:
        n += 1
        if not _trial(scenario, states, work, reference, boundary, crash_at=n):
            break
    generator = random.Random(seed)
    for _ in range(n_random):
        _trial(scenario, states, work, reference, randoms, delay=generator.uniform(0.0, seconds))
    return {"command": scenario.name, "reference_seconds": round(seconds, 2), "boundaries": vars(boundary),
            "boundaries_complete": n < max_boundaries, "random": vars(randoms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", type=int, default=50, help="random-time kills per command")
    parser.add_argument("--max-boundaries", type=int, default=200, help="at most this many boundary kills per command")
    parser.add_argument("--commands", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--name", default="crash_harness", help="results file stem under benchmarks/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/threads-search-crash"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    states = prepare(args.work)
    chosen = [s for s in SCENARIOS if not args.commands or s.name in args.commands]
    results = []
    for scenario in chosen:
        outcome = run_scenario(scenario, states, args.work, args.random, args.max_boundaries)
        results.append(outcome)
        b, r = outcome["boundaries"], outcome["random"]
        print(f"{scenario.name:18s} boundary kills {b['kills']:3d} (failures {Outcome(**b).failures()}), "
              f"random kills {r['kills']:3d} (failures {Outcome(**r).failures()})", flush=True)
        for example in b["examples"][:3] + r["examples"][:3]:
            print("    " + example, flush=True)
        # Written after every command, so a run that stops part-way keeps what it measured.
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
