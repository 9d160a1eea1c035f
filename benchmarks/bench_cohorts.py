"""Training on four generated cohorts (issue 10): what the README's no-flag commands give, against
the best of a small seeded sweep of `train` flags and the 'oracle attention' ceiling.

    python benchmarks/bench_cohorts.py                 # the four cohorts, the full sweep
    python benchmarks/bench_cohorts.py --quick         # tiny cohorts, two sweep configs (a smoke run)
    python benchmarks/bench_cohorts.py --cohorts hard --sweep 5e-4:8,5e-3:16

Per cohort, like a user, every step a `threads-search` subprocess: the cohort files are generated
(the generator's Python call, the layout `demo` writes into DIR/cohort), then `init`, `ingest
slides / expression / mutations` with the cohort's metadata, `train ATLAS --where "cohort =
'train'" --quiet` with no other flag (timed: wall seconds of the process), `embed`, `index`,
`eval ATLAS --label subtype --queries "cohort = 'heldout'" --database "cohort = 'heldout'" --json`.
Mean pooling is the baseline `train` fits beside the model (`embed --model` it; `eval` puts it in
its baseline column). On the demo cohort, `train --threads 2` and `--threads 1` are timed too.

Best: each sweep config (learning rate x epochs, one cosine schedule, seed 0) retrains into the same atlas; models
coexist under their content-hash ids, and `embed --model ID` / `eval --model ID` pick one. It is
picked by the held-out figure itself, so it is optimistic (no separate test split).

Ceiling: the mean of each held-out slide's true tumour patches (`bench_synthetic.oracle_tumour_means`),
ingested with `ingest slide-embeddings` and scored by the same `eval` (same queries, database,
same-patient exclusion, subtype relevance, mAP@5), twice: as they are, and centred on the held-out
slides as bench_synthetic's metric does; the table shows the better of the two.

Writes benchmarks/results/<name>.json after every cohort (name: cohorts, or cohorts-quick) and
<name>.md (the table); `--table-only` recomputes the goals and the table from that JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_synthetic import oracle_tumour_means, read_rows  # noqa: E402

from threads_search.atomic import write_json_atomic  # noqa: E402
from threads_search.synthetic.cohort import CohortConfig, demo_config, generate_cohort  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THREADS_SEARCH = str(Path(sys.executable).with_name("threads-search"))
TRAIN_SQL, HELDOUT_SQL, LABEL, K = "cohort = 'train'", "cohort = 'heldout'", "subtype", 5
METRIC = f"mAP@{K}"
FULL_SWEEP = "5e-4:8,5e-3:8,2e-3:16,5e-3:16,2e-3:24,5e-3:24"  # and the no-flag run
QUICK_SWEEP = "5e-3:2,2e-3:8"
COHORTS = ("demo", "small", "large", "hard")  # (a)-(d) of issue 10, the table's order
HARD_SUBTYPES = ("adenocarcinoma", "squamous", "mucinous", "sarcomatoid", "neuroendocrine", "clear_cell",
                 "papillary", "signet_ring")
HARD_FREQUENCIES = (0.30, 0.20, 0.15, 0.12, 0.085, 0.07, 0.05, 0.025)
# Issue 10's goals for the no-flag run.
GOALS = {"gap_to_best": 0.05, "gap_to_ceiling": 0.1, "rare_classes": 0.6, "site_mixing": 0.8, "train_seconds": 60.0}


def cohort_configs(quick: bool, seed: int) -> dict[str, tuple[CohortConfig, str]]:
    """name -> (cohort config, what it is). Quick: the same shapes at ~60 patients, bags of 30-150."""
    demo = demo_config(seed)
    cohorts = {
        "demo": (demo, "demo_config(): 360 patients, 6 sites (2 held out), bags of 200-1500 patches"),
        "small": (replace(demo, n_patients=150, n_sites=3, n_heldout_sites=1),
                  "150 patients on 3 sites (1 held out), otherwise the demo's"),
        "large": (replace(demo, n_patients=1000, bag_size=(100, 400)),
                  "1,000 patients on 6 sites (2 held out); bags of 100-400 patches (the demo's are 200-1500) "
                  "to fit the time"),
        "hard": (replace(demo, subtypes=HARD_SUBTYPES, subtype_frequencies=HARD_FREQUENCIES, tumour_fraction=(0.02, 0.08),
                         stain_shift=2.5, batch_shift=0.8, min_heldout_per_subtype=4),
                 "360 patients, 8 subtypes (2.5-30 % of patients), tumour fraction 0.02-0.08 (demo 0.03-0.15), "
                 "stain_shift 2.5 (demo 1.0), batch_shift 0.8 (demo 0.3), >= 4 held-out patients per subtype"),
    }
    if quick:
        cohorts = {name: (replace(config, n_patients=min(config.n_patients // 6, 80), bag_size=(30, 150), n_genes=300,
                                  min_heldout_per_subtype=2), "quick: " + note)
                   for name, (config, note) in cohorts.items()}
    return cohorts


def cli(*args, log) -> tuple[str, float]:
    """Run `threads-search ARGS` as a user would; (stdout, wall seconds). RuntimeError on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    done = subprocess.run([THREADS_SEARCH, *map(str, args)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    log(f"    $ threads-search {' '.join(map(str, args))}  ({seconds:.1f} s)")
    if done.returncode:
        raise RuntimeError(f"threads-search {' '.join(map(str, args))} exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout, seconds


def train(atlas: Path, flags: list[str], log) -> dict:
    """`train ATLAS --where ... --quiet FLAGS`: model and baseline ids, wall seconds, load average before."""
    load = os.getloadavg()[0]
    stdout, seconds = cli("train", atlas, "--where", TRAIN_SQL, "--quiet", *flags, log=log)
    model = re.search(r"trained model (\w+)", stdout).group(1)
    best = re.search(r"(?:best|kept) epoch (\d+) of (\d+)", stdout)
    return {"flags": flags, "model_id": model, "baseline_id": re.search(r"baseline model (\w+)", stdout).group(1),
            "train_seconds": round(seconds, 1), "load_average_before": round(load, 2),
            "best_epoch": int(best.group(1)), "epochs_run": int(best.group(2)), "stdout": stdout.strip().splitlines()}


def evaluate(atlas: Path, model_id: str, json_path: Path, log) -> dict:
    """`eval` on the held-out sites at `--model model_id`; the figures the table needs."""
    cli("eval", atlas, "--label", LABEL, "--queries", HELDOUT_SQL, "--database", HELDOUT_SQL, "--model", model_id,
        "--json", json_path, "--quiet", log=log)
    return figures(json.loads(json_path.read_text()))


def figures(report: dict) -> dict:
    """mAP@5 [CI], mean pooling, chance, the worst class, the rare classes, site mixing of one eval report."""
    per_class = {name: f[METRIC] for name, f in report["per_class"].items() if f.get(METRIC) is not None}
    worst = min(per_class, key=lambda name: (per_class[name], name))
    rare = {h["class"]: {METRIC: h[METRIC], "prevalence_share": round(h["prevalence_share"], 4),
                         "n_queries": h["n_queries"], "attainable": h.get("attainable")}
            for h in report["class_highlights"][METRIC]["rare"]}
    mixing = report.get("site_mixing") or {}
    return {METRIC: report["metrics"][METRIC], "ci95": report["ci95"][METRIC],
            "mean_pooling": report["baselines"].get("meanpool", {}).get(METRIC),
            "chance": report["baselines"]["chance"][METRIC],
            "per_class": per_class, "per_class_min": {"class": worst, METRIC: per_class[worst]}, "rare_classes": rare,
            f"site_mixing@{K}": (mixing.get("overall") or {}).get(f"site_mixing@{K}"),
            f"site_mixing@{K}_ci95": (mixing.get("ci95") or {}).get(f"site_mixing@{K}"),
            "site_mixing_undefined_queries": mixing.get("n_undefined"),
            "n_queries": report["n_queries"], "n_database": report["n_database"], "model_id": report["model_id"]}


def ceiling(files, atlas: Path, folder: Path, log) -> dict:
    """Oracle attention on the held-out slides through `ingest slide-embeddings` + `eval`: centred, raw."""
    slide_ids = [r["slide_id"] for r in read_rows(files.slides_csv) if r["cohort"] == "heldout"]
    vectors = oracle_tumour_means(files, slide_ids)
    (folder / "oracle_ids.txt").write_text("\n".join(slide_ids) + "\n")
    results = {}
    for name, matrix in (("centred", vectors - vectors.mean(axis=0)), ("raw", vectors)):
        path = folder / f"oracle_{name}.npy"
        np.save(path, matrix.astype(np.float32))
        stdout, _ = cli("ingest", "slide-embeddings", atlas, path, "--ids", folder / "oracle_ids.txt", "--encoder",
                        f"oracle-tumour-mean-{name}", log=log)
        model_id = re.search(r"model (\w+)\)", stdout).group(1)
        results[name] = evaluate(atlas, model_id, folder / f"eval-oracle-{name}.json", log)
    return results


def parse_sweep(text: str) -> list[tuple[float, int]]:
    return [(float(rate), int(epochs)) for rate, epochs in (part.split(":") for part in text.split(",") if part)]


def run_cohort(name: str, config: CohortConfig, note: str, sweep: list[tuple[float, int]], folder: Path,
               measure_threads: bool, log) -> dict:
    from threads_search.training.config import TrainingConfig

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    files = generate_cohort(folder / "cohort", config)
    log(f"  generated {files.summary.n_slides} slides, {files.summary.n_patches:,} patches "
        f"({time.perf_counter() - started:.0f} s)")
    atlas = folder / "atlas"
    cli("init", atlas, log=log)
    cli("ingest", "slides", atlas, files.features_dir, "--metadata", files.slides_csv, "--quiet", log=log)
    cli("ingest", "expression", atlas, files.expression_csv, "--metadata", files.samples_csv, "--quiet", log=log)
    cli("ingest", "mutations", atlas, files.mutations_maf, "--metadata", files.samples_csv, "--quiet", log=log)
    no_flag = train(atlas, [], log)
    cli("embed", atlas, "--quiet", log=log)
    cli("index", atlas, "--quiet", log=log)
    cli("embed", atlas, "--model", no_flag["baseline_id"], "--quiet", log=log)  # the eval's mean-pooling column
    no_flag["eval"] = evaluate(atlas, no_flag["model_id"], folder / "eval-noflag.json", log)
    log(f"  no-flag: {METRIC} {no_flag['eval'][METRIC]:.3f}, train {no_flag['train_seconds']} s")
    result = {"note": note, "config": config.to_dict(), "summary": files.summary.to_dict(), "no_flag": no_flag}
    if measure_threads:
        result["threads"] = {"1 (no flag)": _timing(no_flag)}
        for count in (2, 1):
            run = train(atlas, ["--threads", str(count)], log)
            result["threads"][f"{count} (--threads {count})"] = _timing(run)
    defaults = TrainingConfig()
    runs = []
    for rate, epochs in sweep:
        flags = ["--learning-rate", f"{rate:g}", "--epochs", str(epochs), "--schedule", "cosine"]
        if (rate, epochs, "cosine") == (defaults.learning_rate, defaults.epochs, defaults.schedule):
            runs.append({**no_flag, "flags": flags, "same_as_no_flag": True})
            continue
        run = train(atlas, flags, log)
        cli("embed", atlas, "--model", run["model_id"], "--quiet", log=log)
        run["eval"] = evaluate(atlas, run["model_id"], folder / f"eval-{rate:g}-{epochs}.json", log)
        log(f"  {' '.join(flags)}: {METRIC} {run['eval'][METRIC]:.3f}, train {run['train_seconds']} s")
        runs.append(run)
    result["sweep"] = runs
    best = max([no_flag, *runs], key=lambda run: run["eval"][METRIC])
    result["best"] = {"flags": best["flags"], "model_id": best["model_id"], METRIC: best["eval"][METRIC],
                      "ci95": best["eval"]["ci95"]}
    result["ceiling"] = ceiling(files, atlas, folder, log)
    result["goals"] = goals(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _timing(run: dict) -> dict:
    return {key: run[key] for key in ("model_id", "train_seconds", "load_average_before", "best_epoch")}


def goals(result: dict) -> dict:
    """Issue 10's goals for the no-flag run, each with its figure and whether it is met.

    Site mixing here is own-site hit share / own-site database share (1.0 = no preference, higher
    = leaning on the own site), so "site mixing >= 0.8" is read as within [0.8, 1 / 0.8]."""
    figures_ = result["no_flag"]["eval"]
    value = figures_[METRIC]
    ceiling_value = ceiling_figure(result)[METRIC]
    rare = [r[METRIC] for r in figures_["rare_classes"].values()]
    mixing = _site_mixing(result)
    seconds = result["no_flag"]["train_seconds"]
    return {
        "gap_to_best": {"value": round(result["best"][METRIC] - value, 4),
                        "met": result["best"][METRIC] - value <= GOALS["gap_to_best"]},
        "gap_to_ceiling": {"value": round(ceiling_value - value, 4), "met": ceiling_value - value <= GOALS["gap_to_ceiling"]},
        "rare_classes": {"value": min(rare) if rare else None,
                         "met": (min(rare) >= GOALS["rare_classes"]) if rare else None},
        "site_mixing": {"value": mixing, "met": None if mixing is None else
                        GOALS["site_mixing"] <= mixing <= 1 / GOALS["site_mixing"]},
        "train_seconds": {"value": seconds, "met": seconds <= GOALS["train_seconds"]},
    }


def ceiling_figure(result: dict) -> dict:
    """The better of the two oracle-attention scorings (centred or raw cosine), with its name."""
    name = max(result["ceiling"], key=lambda variant: result["ceiling"][variant][METRIC])
    return {"variant": name, METRIC: result["ceiling"][name][METRIC]}


def markdown(report: dict) -> str:
    rows = ["| cohort | no-flag mAP@5 [95% CI] | best [flags] | ceiling | mean pooling | chance | per-class min (class) "
            "| rare classes (<= 5 %) | site mixing@5 | no-flag schedule | train s |", "|" + "---|" * 11]
    order = [name for name in COHORTS if name in report["cohorts"]] + sorted(set(report["cohorts"]) - set(COHORTS))
    for name in order:
        result = report["cohorts"][name]
        figures_ = result["no_flag"]["eval"]
        low, high = figures_["ci95"]
        best = result["best"]
        rare = ", ".join(f"{c} {r[METRIC]:.3f}" + (f" (max {r['attainable']:.2f})" if (r.get("attainable") or 1) < 1 else "")
                         for c, r in figures_["rare_classes"].items()) or "none"
        mixing, ceiling = _site_mixing(result), ceiling_figure(result)
        rows.append(f"| {name} | {figures_[METRIC]:.3f} [{low:.3f}, {high:.3f}] | {best[METRIC]:.3f} "
                    f"[{' '.join(best['flags']) or 'no flag'}] | {ceiling['mAP@5']:.3f} ({ceiling['variant']}) | "
                    f"{_number(figures_['mean_pooling'])} | {figures_['chance']:.3f} | "
                    f"{figures_['per_class_min'][METRIC]:.3f} ({figures_['per_class_min']['class']}) | {rare} | "
                    f"{_number(mixing)} | {_schedule_kept(result['no_flag'])} | {result['no_flag']['train_seconds']:.0f} |")
    return "\n".join(rows) + "\n"


def _site_mixing(result: dict) -> float | None:
    """site_mixing@5 of the no-flag run; None with one held-out site (its only site: 1.0 by construction)."""
    if result["config"]["n_heldout_sites"] < 2:
        return None
    return result["no_flag"]["eval"][f"site_mixing@{K}"]


def _schedule_kept(run: dict) -> str:
    """What `train` printed for schedule 'auto', e.g. '8 of 8/24 epochs'; '-' for runs before it existed."""
    for line in run.get("stdout", []):
        found = re.search(r"schedule 'auto': kept cosine over (\d+) epochs .*?; (\d+) epochs", line)
        if found:
            return f"{found.group(1)} (of {min(map(int, found.groups()))}/{max(map(int, found.groups()))}) epochs"
    return "-"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny cohorts and a two-config sweep (a smoke run)")
    parser.add_argument("--cohorts", nargs="+", default=["small", "demo", "hard", "large"])
    parser.add_argument("--sweep", default=None, help=f"learning_rate:epochs,... (default {FULL_SWEEP}; quick {QUICK_SWEEP})")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (training keeps its default seed 0)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the cohorts and atlases (default: a temp dir)")
    parser.add_argument("--name", default=None, help="results file stem (default cohorts, or cohorts-quick)")
    parser.add_argument("--table-only", action="store_true", help="recompute goals and the table from the JSON, run nothing")
    args = parser.parse_args()
    sweep = parse_sweep(args.sweep or (QUICK_SWEEP if args.quick else FULL_SWEEP))
    name = args.name or ("cohorts-quick" if args.quick else "cohorts")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cohorts_"))
    configs = cohort_configs(args.quick, args.seed)
    path = RESULTS / f"{name}.json"
    if args.table_only:
        report = json.loads(path.read_text())
        for result in report["cohorts"].values():
            result["goals"] = goals(result)
        write_json_atomic(path, report)
        (RESULTS / f"{name}.md").write_text(markdown(report))
        return
    previous = json.loads(path.read_text()).get("cohorts", {}) if path.exists() else {}
    report = {"command": "python benchmarks/bench_cohorts.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "sweep": [{"learning_rate": rate, "epochs": epochs} for rate, epochs in sweep],
              "goals": GOALS, "cohorts": previous}

    def log(line: str) -> None:
        print(line, flush=True)

    for cohort in args.cohorts:
        config, note = configs[cohort]
        log(f"{cohort}: {note}")
        try:
            result = run_cohort(cohort, config, note, sweep, work / cohort, measure_threads=cohort == "demo", log=log)
        except RuntimeError as failure:  # a failed command: record it, go on with the next cohort
            log(f"  FAILED: {failure}")
            report.setdefault("failures", {})[cohort] = str(failure)
            write_json_atomic(path, report)
            continue
        result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        report["cohorts"][cohort] = result
        RESULTS.mkdir(exist_ok=True)
        write_json_atomic(path, report)
        (RESULTS / f"{name}.md").write_text(markdown(report))
        log(f"  wrote {path} ({result['seconds']:.0f} s for {cohort})")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
