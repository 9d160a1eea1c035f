"""`eval` and `fewshot` over the atlas: select queries and database by SQL, take one model's
embeddings (and the mean-pooling baseline's for the same items), hand them to the evaluator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas import Atlas, quote_identifier
from threads_search.embedding_store import load_embeddings
from threads_search.errors import InputError
from threads_search.filters import check_where
from threads_search.models import baseline_model_id, resolve_model_id

SITE_COLUMNS = ("site", "cohort", "center", "centre")


@dataclass
class Selection:
    """Embedded items of one modality with their label, patient and site."""

    modality: str
    vids: np.ndarray
    item_ids: list[str]
    labels: list[str]
    patients: list[str]
    sites: list[str] | None
    vectors: np.ndarray


@dataclass
class AtlasEvaluation:
    model_id: str
    report: object  # RetrievalReport of the model
    baseline: object | None  # RetrievalReport of mean pooling on the same items
    queries: Selection
    database: Selection
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """SPEC §5's `eval --json` object, with the baseline and chance beside the model."""
        payload = self.report.to_dict()
        payload["model_id"] = self.model_id
        payload["query_modality"], payload["target"] = self.queries.modality, self.database.modality
        payload["baselines"] = {"chance": payload["chance"]["metrics"]}
        if self.baseline is not None:
            payload["baselines"]["meanpool"] = self.baseline.to_dict()["metrics"]
        payload["notes"] = self.notes
        return payload


def _site_column(atlas: Atlas) -> str | None:
    columns = atlas.metadata_columns()
    return next((c for c in SITE_COLUMNS if c in columns), None)


def select(atlas: Atlas, model_id: str, modality: str, label: str, sql: str | None, option: str,
           notes: list[str]) -> Selection:
    """Items of `modality` matching `sql` that carry a label and are embedded with the model."""
    condition = f"AND ({check_where(atlas, sql, option)})" if sql else ""
    site = _site_column(atlas)
    site_select = f"CAST({quote_identifier(site)} AS VARCHAR)" if site else "NULL"
    rows = atlas.sql(f"SELECT vid, item_id, CAST({quote_identifier(label)} AS VARCHAR), patient_id, {site_select} "
                     f"FROM items WHERE modality = ? {condition} ORDER BY vid", [modality]).fetchall()
    if not rows:
        raise InputError(f"{option} \"{sql}\" selects no {modality}" if sql else f"the atlas holds no {modality}")
    labelled = [r for r in rows if r[2] is not None]
    if not labelled:
        raise InputError(f"--label {label}: empty for every {modality} item selected by {option}")
    if len(labelled) < len(rows):
        notes.append(f"{len(rows) - len(labelled)} {modality} item(s) selected by {option} have no '{label}' and are left out")
    ids, vectors = load_embeddings(atlas, model_id, modality, [r[0] for r in labelled])
    if ids.size == 0:
        raise InputError(f"no selected {modality} item is embedded with model {model_id}; run `threads-search embed`")
    if ids.size < len(labelled):
        notes.append(f"{len(labelled) - ids.size} selected {modality} item(s) are not embedded with model {model_id}")
    by_vid = {r[0]: r for r in labelled}
    chosen = [by_vid[int(v)] for v in ids]
    return Selection(modality, ids, [r[1] for r in chosen], [r[2] for r in chosen], [r[3] for r in chosen],
                     [r[4] for r in chosen] if site else None, vectors)


def _check_label(atlas: Atlas, label: str) -> None:
    columns = atlas.metadata_columns()
    if label not in columns:
        raise InputError(f"--label {label}: no such metadata column (columns: {', '.join(columns) or 'none'})")


def _evaluate(queries: Selection, database: Selection, ks, n_bootstrap: int, seed: int, name: str):
    from threads_search.evaluation import evaluate_retrieval

    extra = {"site": queries.sites} if queries.sites else None
    return evaluate_retrieval(queries.vectors, queries.labels, queries.patients, database.vectors, database.labels,
                              database.patients, ks=ks, n_bootstrap=n_bootstrap, seed=seed, extra_query_columns=extra,
                              query_ids=[f"{queries.modality}:{i}" for i in queries.item_ids],
                              db_ids=[f"{database.modality}:{i}" for i in database.item_ids], name=name)


def evaluate_atlas(atlas: Atlas, label: str, queries_sql: str | None, database_sql: str | None,
                   query_modality: str = "slides", target: str = "slides", ks=(1, 5, 10), n_bootstrap: int = 1000,
                   seed: int = 0, model_id: str | None = None) -> AtlasEvaluation:
    """Retrieval metrics of a model (and of mean pooling on the same items) with CIs and chance."""
    _check_label(atlas, label)
    model_id = resolve_model_id(atlas, model_id)
    notes: list[str] = []
    queries = select(atlas, model_id, query_modality, label, queries_sql, "--queries", notes)
    database = select(atlas, model_id, target, label, database_sql, "--database", notes)
    if max(ks) > len(database.vids):
        raise InputError(f"-k {max(ks)}: larger than the database ({len(database.vids)} {target} selected by --database)")
    recipe = atlas.sql("SELECT recipe FROM models WHERE model_id = ?", [model_id]).fetchone()[0]
    report = _evaluate(queries, database, ks, n_bootstrap, seed, f"{recipe} {model_id[:8]}")
    baseline = None
    baseline_id = baseline_model_id(atlas)
    if baseline_id and baseline_id != model_id:
        ignored: list[str] = []
        base_queries = select(atlas, baseline_id, query_modality, label, queries_sql, "--queries", ignored)
        base_database = select(atlas, baseline_id, target, label, database_sql, "--database", ignored)
        if len(base_queries.vids) == len(queries.vids) and len(base_database.vids) == len(database.vids):
            baseline = _evaluate(base_queries, base_database, ks, n_bootstrap, seed, "mean pooling")
        else:
            notes.append(f"mean-pooling baseline {baseline_id} is not embedded for every selected item; "
                         f"run `threads-search embed --model {baseline_id}` to compare")
    if query_modality != target and baseline is not None:
        notes.append("mean pooling has no shared slide/profile space: its cross-modal figures are an untrained reference")
    return AtlasEvaluation(model_id, report, baseline, queries, database, notes)


def write_evaluation(evaluation: AtlasEvaluation, json_path: Path | None, plots_dir: Path | None) -> list[Path]:
    """The JSON report and the PNG plots; returns the paths written."""
    from threads_search.atlas import write_json_atomic

    written = []
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, evaluation.to_json())
        written.append(json_path)
    if plots_dir is not None:
        from threads_search.evaluation import write_plots

        reports = [evaluation.report] + ([evaluation.baseline] if evaluation.baseline is not None else [])
        both = [evaluation.queries] + ([evaluation.database] if evaluation.database.modality != evaluation.queries.modality else [])
        vectors = np.concatenate([s.vectors for s in both])
        labels = sum((s.labels for s in both), [])
        sites = sum((s.sites or [] for s in both), []) or None
        written += write_plots(reports, plots_dir, embeddings=vectors, embedding_labels=labels, embedding_sites=sites)
    return written


def fewshot_atlas(atlas: Atlas, label: str, train_sql: str, test_sql: str, shots=(1, 2, 4, 8, 16), n_repeats: int = 10,
                  seed: int = 0, model_id: str | None = None, modality: str = "slides"):
    """Prototype classification vs a linear probe from k labelled items per class."""
    from threads_search.evaluation import fewshot_curve

    _check_label(atlas, label)
    model_id = resolve_model_id(atlas, model_id)
    notes: list[str] = []
    train = select(atlas, model_id, modality, label, train_sql, "--train", notes)
    test = select(atlas, model_id, modality, label, test_sql, "--test", notes)
    overlap = set(train.patients) & set(test.patients)
    if overlap:
        notes.append(f"{len(overlap)} patient(s) are in both --train and --test (e.g. {sorted(overlap)[0]})")
    curve = fewshot_curve(train.vectors, train.labels, test.vectors, test.labels, shots=shots, n_repeats=n_repeats, seed=seed)
    return model_id, curve, notes
