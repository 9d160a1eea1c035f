"""Readers during writers: searches while `ingest`, `embed` and `index` run, and writers started
while readers hold the atlas open.

For each writer (on a copy of a prepared atlas, see crash_harness.prepare): the expected answer of
a fixed query before the write and after it is computed on separate copies; then the writer runs
while reader processes search in a loop. A search fails if it raises or exits non-zero; it is
wrong if its hits are neither the before-answer nor the after-answer (a reader must see one
published state or the other, never a mix). Then, with readers holding the atlas open, each
writer is started again on a fresh copy: it must succeed.

    python benchmarks/concurrency_harness.py --searches 200

Writes benchmarks/results/concurrency_harness.json. tests/test_reliability.py runs a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_harness import CLI, RESULTS, prepare, run_cli  # noqa: E402

WRITERS = {
    "ingest": ("indexed", ["ingest", "slides", "{atlas}", "{grown}", "--metadata", "{cohort}/slides.csv"]),
    "embed": ("indexed_grown_unembedded", ["embed", "{atlas}"]),
    "index": ("indexed_grown", ["index", "{atlas}"]),
}

READER = textwrap.dedent("""
    import json, sys, time
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas
    atlas_path, slide, n, fresh = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "fresh"
    results = []
    atlas = None if fresh else open_atlas(atlas_path, read_only=True)
    for _ in range(n):
        started = time.time()
        try:
            if fresh:  # like a CLI search: a new process state each time
                with open_atlas(atlas_path, read_only=True) as opened:
                    hits = search_atlas(opened, Query(slide_id=slide), SearchOptions(k=5)).hits
            else:  # like the service: one open atlas that follows new generations
                atlas.refresh()
                hits = search_atlas(atlas, Query(slide_id=slide), SearchOptions(k=5)).hits
            results.append({"hits": [h["id"] for h in hits], "at": [started, time.time()]})
        except Exception as error:
            results.append({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", "at": [started, time.time()]})
    print(json.dumps(results))
""")


def _answer(atlas: Path, slide: str) -> list[str]:
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas

    with open_atlas(atlas, read_only=True) as opened:
        return [h["id"] for h in search_atlas(opened, Query(slide_id=slide), SearchOptions(k=5)).hits]


def _fill(args: list[str], atlas: Path, states: dict) -> list[str]:
    grown = [str(p) for p in sorted((states["cohort"] / "features").glob("*S2-*.h5"))]
    out = []
    for a in args:
        if a == "{grown}":
            out += grown
        else:
            out.append(a.format(atlas=atlas, cohort=states["cohort"]))
    return out


def _extra_states(states: dict, work: Path) -> None:
    """An atlas whose new slides are ingested but not yet embedded (for the embed writer)."""
    target = work / "state-indexed_grown_unembedded"
    if target.exists():
        return
    shutil.copytree(states["indexed"], target)
    grown = [str(p) for p in sorted((states["cohort"] / "features").glob("*S2-*.h5"))]
    result = run_cli(["ingest", "slides", str(target), *grown, "--metadata", str(states["cohort"] / "slides.csv")])
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    states["indexed_grown_unembedded"] = target


def searches_during(name: str, states: dict, work: Path, n_searches: int, readers: int = 2) -> dict:
    base, args = WRITERS[name]
    slide = "SYN-S1-0001-01Z-00-DX1"
    before, after = work / f"{name}-before", work / f"{name}-after"
    for path in (before, after):
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(states[base], path)
    result = run_cli(_fill(args, after, states))
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    expected = {tuple(_answer(before, slide)), tuple(_answer(after, slide))}
    live = work / f"{name}-live"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(states[base], live)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    per_reader = max(1, n_searches // readers)
    reader_processes = [subprocess.Popen([sys.executable, "-c", READER, str(live), slide, str(per_reader),
                                          "fresh" if i % 2 == 0 else "warm"], stdout=subprocess.PIPE, text=True, env=env)
                        for i in range(readers)]
    time.sleep(0.5)
    window = [time.time()]
    writer = subprocess.run(CLI + _fill(args, live, states), capture_output=True, text=True, env=env)
    window.append(time.time())
    outcomes = [json.loads(p.communicate()[0] or "[]") for p in reader_processes]
    flat = [o for outcome in outcomes for o in outcome]
    overlapping = sum(1 for o in flat if o["at"][1] > window[0] and o["at"][0] < window[1])
    failures = [o["error"] for o in flat if "error" in o]
    wrong = [o["hits"] for o in flat if "hits" in o and tuple(o["hits"]) not in expected]
    final = tuple(_answer(live, slide))
    return {"writer": name, "writer_exit": writer.returncode, "writer_error": writer.stderr.strip()[-300:] or None,
            "searches": len(flat), "searches_during_the_write": overlapping, "failures": len(failures), "wrong_results": len(wrong),
            "final_is_after": final == tuple(_answer(after, slide)), "examples": failures[:3] + [str(w) for w in wrong[:3]]}


def writers_while_readers_hold(states: dict, work: Path) -> dict:
    """Each writer started while two readers hold the atlas open and search: all must succeed."""
    started, failed = 0, []
    for name, (base, args) in WRITERS.items():
        live = work / f"{name}-held"
        shutil.rmtree(live, ignore_errors=True)
        shutil.copytree(states[base], live)
        holders = [subprocess.Popen([sys.executable, "-c", READER, str(live), "SYN-S1-0001-01Z-00-DX1", "30", "warm"],
                                    stdout=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(1.0)
        writer = run_cli(_fill(args, live, states))
        started += 1
        if writer.returncode != 0:
            failed.append(f"{name}: {writer.stderr.strip()[-200:]}")
        for holder in holders:
            holder.communicate()
    return {"writers_started": started, "failures": len(failed), "examples": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--searches", type=int, default=200, help="searches per writer, over all readers")
    parser.add_argument("--name", default="concurrency_harness", help="results file stem under benchmarks/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/threads-search-concurrency"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    states = prepare(args.work)
    _extra_states(states, args.work)
    during = [searches_during(name, states, args.work, args.searches) for name in WRITERS]
    for row in during:
        print(f"{row['writer']:7s}: {row['searches']} searches ({row['searches_during_the_write']} while it wrote), {row['failures']} failures, "
              f"{row['wrong_results']} wrong; writer exit {row['writer_exit']}; final state = after: {row['final_is_after']}")
        for example in row["examples"]:
            print("    " + example)
    held = writers_while_readers_hold(states, args.work)
    print(f"writers started while readers held the atlas: {held['writers_started']}, failures {held['failures']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "during_writes": during, "writers_while_readers_hold": held}, indent=2))


if __name__ == "__main__":
    main()
