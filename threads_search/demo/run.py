"""`threads-search demo` (SPEC §8): the whole pipeline on a generated cohort, in a few minutes.

generate -> init -> ingest -> train on the training sites -> embed (trained model and mean
pooling) -> index -> a rare-case search -> evaluate on the held-out sites (slide -> slide and
expression -> slide, against mean pooling and chance) -> expression prototypes and zero-shot
classification of the held-out slides. Layout of the `--out` folder:

    cohort/                    the generated files (TRIDENT .h5, expression.csv, MAF, CSVs)
    atlas/                     the atlas, left for the user (its slides point into cohort/)
    report/demo.json           every figure, the settings, the timings
    report/<task>.json         the evaluator's full report per task (SPEC §5 `eval --json`)
    report/plots/<task>/*.png  per-class mAP, precision@K, embedding projection
    report/plots/training.png  loss and validation mAP per epoch

Re-running on the same folder is described in `demo_folder`.

    >>> report = run_demo("threads-search-demo", quick=True)
    >>> report.summary["slide_to_slide"]["trained"]["mAP@5"]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from threads_search import __version__
from threads_search.atlas.store import utc_now
from threads_search.atomic import write_json_atomic
from threads_search.demo.folder import DemoLayout, prepare_folder
from threads_search.demo.report import evaluation_summary, plot_training_curve
from threads_search.synthetic.cohort import CohortConfig, demo_config, quick_config
from threads_search.training.threads import using_torch_threads

LABEL = "subtype"
TRAIN_SQL = "cohort = 'train'"
HELDOUT_SQL = "cohort = 'heldout'"
SEARCH_K = 5
N_STAGES = 8
TASKS = {"slide_to_slide": "slides", "expression_to_slide": "expression"}  # task -> query modality

Echo = Callable[[str], None]
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides a demo run (recorded in demo.json)."""

    quick: bool
    seed: int
    cohort: CohortConfig
    training: object  # threads_search.training.config.TrainingConfig
    n_bootstrap: int
    ks: tuple[int, ...] = (1, 5, 10)


def demo_recipe_path(quick: bool = False) -> Path:
    """The demo's training recipe, a TOML file shipped in the package (`train --config` reads it too)."""
    return Path(__file__).with_name("recipe-quick.toml" if quick else "recipe.toml")


def demo_settings(quick: bool = False, seed: int = 0) -> DemoSettings:
    """The demo's cohort and training recipe (demo/recipe.toml, demo/recipe-quick.toml; `seed` replaces theirs).

    Full: `demo_config` (360 patients, 428 slides, ~270k patches), 8 epochs of the CPU-sized
    ABMIL recipe at 512 patches per slide (benchmarks/bench_demo.py measures it; how the recipe
    was chosen is in the file). Quick: `quick_config` (60 patients, small bags), for tests.
    """
    from threads_search.training.config import TrainingConfig

    training = replace(TrainingConfig.from_toml(demo_recipe_path(quick)), seed=seed)
    if quick:
        return DemoSettings(True, seed, quick_config(seed), training, n_bootstrap=50)
    return DemoSettings(False, seed, demo_config(seed), training, n_bootstrap=1000)


@dataclass
class DemoReport:
    """What `run_demo` did: the folder, and the content of `report/demo.json`."""

    out_dir: Path
    atlas_dir: Path
    report_json: Path
    payload: dict
    already_finished: bool = False  # the folder held this finished demo; nothing was recomputed
    restarted: bool = False  # the folder held an interrupted demo, which was started over

    @property
    def summary(self) -> dict:
        return self.payload["summary"]


@dataclass
class _Run:
    """Callbacks and bookkeeping shared by the stages of one run."""

    layout: DemoLayout
    settings: DemoSettings
    echo: Echo
    progress: Progress
    show_search: Callable | None
    timings: dict[str, float] = field(default_factory=dict)
    payload: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str, index: int, text: str):
        """Announce stage `index` of N_STAGES and time it into `timings[name]` (seconds)."""
        self.echo(f"[{index}/{N_STAGES}] {text}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 2)


def run_demo(out_dir: str | Path = "threads-search-demo", quick: bool = False, seed: int = 0,
             echo: Echo | None = None, progress: Progress | None = None,
             show_search: Callable | None = None, torch_threads: int | None = 1) -> DemoReport:
    """Run the whole demo into `out_dir` (see the module docstring); returns its report.

    echo(line): narration, one line per stage and per training epoch.
    progress(what, done, total): per-item progress inside long stages.
    show_search(SearchResult): how to show the rare-case search (the CLI renders its table).
    torch_threads: intra-op threads while the demo runs (see `training.threads.using_torch_threads`); None keeps
    the caller's setting.
    Raises InputError when `out_dir` holds something other than a demo (see `demo_folder`).
    """
    settings = demo_settings(quick, seed)
    layout, finished, restarted = prepare_folder(out_dir, quick, seed)
    if finished is not None:
        return DemoReport(layout.root, layout.atlas, layout.report_json, finished, already_finished=True)
    run = _Run(layout, settings, echo or (lambda line: None), progress or (lambda what, done, total: None), show_search)
    if restarted:
        run.echo(f"{layout.root} held an interrupted demo; starting it over")
    started = time.perf_counter()
    files = _generate(run)
    from threads_search.atlas.store import init_atlas

    with using_torch_threads(torch_threads), init_atlas(layout.atlas) as atlas:
        _ingest(run, atlas, files)
        trained = _train(run, atlas)
        _embed_and_index(run, atlas, trained)
        _rare_case_search(run, atlas, files, trained.model_id)
        _evaluate(run, atlas, trained.model_id)
        _prototypes(run, atlas, trained.model_id)
    run.timings["total"] = round(time.perf_counter() - started, 2)
    payload = _finish_payload(run, files)
    write_json_atomic(layout.report_json, payload)
    return DemoReport(layout.root, layout.atlas, layout.report_json, payload, restarted=restarted)


def _generate(run: _Run):
    from threads_search.synthetic.cohort import generate_cohort

    config = run.settings.cohort
    with run.stage("generate", 1, f"generating a paired cohort ({config.n_patients} patients, {config.n_sites} sites, "
                                  f"held out: {', '.join(config.heldout_sites)}) in {run.layout.cohort}"):
        files = generate_cohort(run.layout.cohort, config)
    summary = files.summary
    counts = ", ".join(f"{name} {n}" for name, n in summary.subtype_counts.items())
    run.echo(f"      {summary.n_slides} slides ({summary.n_patches:,} patches of {config.feature_dim}-d features), "
             f"{summary.n_expression_samples} expression profiles, {summary.n_mutation_samples} mutation panels; "
             f"subtypes (patients): {counts}")
    return files


def _ingest(run: _Run, atlas, files) -> None:
    from threads_search.ingest.profiles import ingest_expression, ingest_mutations
    from threads_search.ingest.slides import ingest_slides

    with run.stage("ingest", 2, f"ingesting into the atlas {run.layout.atlas}"):
        slides = ingest_slides(atlas, [files.features_dir], files.slides_csv,
                               progress=lambda done, total, item: run.progress("reading feature files", done, total))
        expression = ingest_expression(atlas, files.expression_csv, files.samples_csv)
        mutations = ingest_mutations(atlas, files.mutations_maf, files.samples_csv)
    from threads_search.atlas.profiles import expression_scale

    scale = expression_scale(atlas)
    run.echo(f"      {slides.added} slides, {expression.added} expression profiles (scale: {scale[0]}, {scale[1]}), "
             f"{mutations.added} mutation panels")
    for warning in slides.warnings + expression.warnings + mutations.warnings:
        run.echo(f"      note: {warning}")


def _train(run: _Run, atlas):
    from threads_search.training.job import train_atlas_model
    from threads_search.training.summary import validation_line

    config = run.settings.training
    text = (f"training {config.recipe} on the training sites ({TRAIN_SQL}): up to {config.epochs} epochs, "
            f"{config.patches_per_slide} patches per slide, {config.batch_size} patients per step")

    def on_epoch(record) -> None:
        validation = f", validation mAP@5 {record.val_map:.3f}" if record.val_map is not None else ""
        run.echo(f"      epoch {record.epoch:2d}: loss {record.train_loss:.3f}{validation} ({record.seconds:.1f} s)")

    with run.stage("train", 3, text):
        trained = train_atlas_model(atlas, config, where_sql=TRAIN_SQL, label_column=LABEL, on_epoch=on_epoch)
    training = trained.training
    run.echo(f"      kept epoch {training.best_epoch} (best validation mAP@{config.eval_k} over {len(training.history)} "
             f"epochs, same {LABEL} = relevant); model {trained.model_id}, mean-pooling baseline {trained.baseline_id}")
    line = validation_line(training.initial_val_map, training.history, training.val_modalities, LABEL, config.eval_k)
    if line:
        run.echo(f"      {line}")
    run.payload["models"] = {
        "trained": trained.model_id, "meanpool": trained.baseline_id, "recipe": config.recipe,
        "device": training.device, "n_training_slides": trained.n_slides, "n_training_patients": trained.n_patients,
        "best_epoch": training.best_epoch, "epochs_run": len(training.history), "stopped_early": training.stopped_early,
        "initial_val_map": training.initial_val_map, "history": [vars(record) for record in training.history]}
    run.payload["training_plot"] = str(plot_training_curve(training.history, run.layout.plots / "training.png"))
    return trained


def _embed_and_index(run: _Run, atlas, trained) -> None:
    from threads_search.jobs.embed import embed_atlas
    from threads_search.jobs.index import build_atlas_indexes

    models = {"trained model": trained.model_id, "mean pooling": trained.baseline_id}
    with run.stage("embed", 4, "embedding every slide and profile with the trained model and with mean pooling"):
        for name, model_id in models.items():
            embed_atlas(atlas, model_id, lambda done, total, item, name=name: run.progress(f"embedding ({name})", done, total))
    with run.stage("index", 5, "building the FAISS indexes (one per model and modality)"):
        trained_report = build_atlas_indexes(atlas, trained.model_id, seed=run.settings.seed)
        run.echo("      " + ", ".join(f"{modality}: {s['count']} vectors, {s['kind']} ({s['factory']})"
                                      for modality, s in trained_report.built.items()))
        _index_baseline(run, atlas, trained.baseline_id)
    from threads_search.atlas.indexes import index_summaries

    run.payload["indexes"] = [{"model_id": s["model_id"], "modality": s["modality"], "kind": s["kind"],
                               "n_vectors": s["vectors"], "recall_at_10": s["recall_at_10"]} for s in index_summaries(atlas)]


def _index_baseline(run: _Run, atlas, baseline_id: str) -> None:
    """Index mean pooling too, so that `search --model` can compare; the demo's own figures use
    its embeddings, so a refused modality is a note, not a failure."""
    from threads_search.errors import InputError
    from threads_search.jobs.index import build_atlas_indexes

    try:
        build_atlas_indexes(atlas, baseline_id, seed=run.settings.seed)
    except InputError as refusal:
        note = f"mean pooling ({baseline_id}): not every modality could be indexed ({refusal})"
        run.payload.setdefault("notes", []).append(note)
        run.echo(f"      note: {note}")


def _rarest_subtype(files) -> str:
    counts = files.summary.subtype_counts
    return min(counts, key=lambda name: (counts[name], list(counts).index(name)))


def _rare_case_search(run: _Run, atlas, files, model_id: str) -> None:
    from threads_search.search.query import Query, SearchOptions, search_atlas

    rare = _rarest_subtype(files)
    from threads_search.atlas.items import item_table
    from threads_search.atlas.where import matching_vids

    heldout = item_table(atlas, "slides", matching_vids(atlas, "slides", HELDOUT_SQL), [LABEL])
    slide_id = min(item for item, label in zip(heldout.item_ids, heldout.values[LABEL]) if label == rare)
    n_rare, n_all = files.summary.subtype_counts[rare], files.summary.n_patients
    with run.stage("search", 6, f"rare-case search: held-out slide {slide_id} ({LABEL} {rare}, the rarest: "
                                f"{n_rare} of {n_all} patients) -> top {SEARCH_K} slides of the whole atlas"):
        result = search_atlas(atlas, Query(slide_id=slide_id), SearchOptions(target="slides", k=SEARCH_K, label=LABEL,
                                                                             model_id=model_id))
    if run.show_search is not None:
        run.show_search(result)
    run.payload["search"] = {"slide_id": slide_id, LABEL: rare, "rarest_patients": n_rare, "k": SEARCH_K,
                             "hits": result.hits, "majority": result.majority(),
                             "n_relevant_hits": sum(hit.get(LABEL) == rare for hit in result.hits)}


def _evaluate(run: _Run, atlas, model_id: str) -> None:
    from threads_search.jobs.evaluate import evaluate_atlas, write_evaluation

    settings = run.settings
    evaluations = {}
    with run.stage("evaluate", 7, f"evaluating on the held-out sites ({HELDOUT_SQL}): slide -> slide and "
                                  f"expression -> slide, relevant = same {LABEL}, {settings.n_bootstrap} bootstrap draws"):
        for task, query_modality in TASKS.items():
            evaluation = evaluate_atlas(atlas, LABEL, HELDOUT_SQL, HELDOUT_SQL, query_modality=query_modality,
                                        target="slides", ks=settings.ks, n_bootstrap=settings.n_bootstrap,
                                        seed=settings.seed, model_id=model_id)
            json_path = run.layout.report / f"{task}.json"
            written = write_evaluation(evaluation, json_path, run.layout.plots / task)
            evaluations[task] = evaluation_summary(evaluation.to_json(), SEARCH_K, json_path,
                                                   [p for p in written if p.suffix == ".png"])
            run.echo(f"      {query_modality} -> slides: {evaluations[task]['n_queries']} queries, "
                     f"{evaluations[task]['n_database']} slides; wrote {json_path}")
    run.payload["evaluation"] = evaluations
    rare = run.payload["search"][LABEL]
    rare_class = evaluations["slide_to_slide"]["per_class"].get(rare, {})
    if rare_class.get(f"Acc@{SEARCH_K}") is not None:
        run.echo(f"      rarest subtype {rare}: {rare_class['n_queries']} held-out queries, a {rare} slide in the top "
                 f"{SEARCH_K} for {rare_class[f'Acc@{SEARCH_K}']:.0%} of them")


def _prototypes(run: _Run, atlas, model_id: str) -> None:
    from threads_search.search.prototypes import build_prototypes, classify_slides

    with run.stage("prototypes", 8, f"molecular prompting: {LABEL} prototypes from the training sites' expression, "
                                    "zero-shot classification of the held-out slides"):
        prototype_set = build_prototypes(atlas, model_id, LABEL, "expression", where_sql=TRAIN_SQL)
        classification = classify_slides(atlas, prototype_set.name, where_sql=HELDOUT_SQL)
    accuracy = classification.balanced_accuracy()
    run.payload["prototypes"] = {
        "name": prototype_set.name, "modality": "expression", "classes": prototype_set.classes,
        "members": prototype_set.members, "n_slides": len(classification.slide_ids),
        "balanced_accuracy": accuracy, "chance": 1.0 / len(prototype_set.classes)}


def _finish_payload(run: _Run, files) -> dict:
    settings, layout = run.settings, run.layout
    training = asdict(replace(settings.training, model=dict(settings.training.model)))
    command = f"threads-search demo --out {layout.root}{' --quick' if settings.quick else ''} --seed {settings.seed}"
    payload = {
        "threads_search_version": __version__,
        "command": command,
        "finished_at": utc_now().isoformat(),
        "settings": {"quick": settings.quick, "seed": settings.seed, "label": LABEL, "train_sql": TRAIN_SQL,
                     "heldout_sql": HELDOUT_SQL, "k": SEARCH_K, "ks": list(settings.ks),
                     "n_bootstrap": settings.n_bootstrap, "cohort": settings.cohort.to_dict(), "training": training},
        "cohort": {"folder": str(layout.cohort), **files.summary.to_dict()},
        "atlas": str(layout.atlas),
        **run.payload,
        "timings_s": dict(run.timings),
    }
    payload["summary"] = {task: {name: payload["evaluation"][task][name] for name in ("trained", "meanpool", "chance")}
                          for task in TASKS}
    payload["summary"]["prototype_balanced_accuracy"] = payload["prototypes"]["balanced_accuracy"]
    return payload
