"""`eval` and `fewshot` over the atlas: select queries and database by SQL, take one model's
embeddings (and the mean-pooling baseline's for exactly the same items), hand them to the
evaluator (`threads_search.evaluation`), which ranks exactly and never returns an item of the
query's own patient."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.items import item_table
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import baseline_model_id, model_recipe, resolve_model_id
from threads_search.atlas.where import check_where
from threads_search.errors import InputError

# Metadata columns the metrics are also broken down by (per_group in the JSON), when present.
GROUP_COLUMNS = ("site", "cohort", "center", "centre")
# Group value of an item whose site / cohort cell is empty (the evaluator refuses missing keys).
MISSING_GROUP = "(none)"
# Metadata columns read as the site for site mixing when `--site-column` is not given: the first present.
SITE_COLUMNS = ("site", "center", "centre", "site_id", "tissue_source_site", "institution", "hospital")


@dataclass
class Selection:
    """Embedded, labelled items of one modality, in vid order.

    vids (n,) int64; item_ids, labels, patients: n str each; groups: column -> n str
    (site, cohort ... values, MISSING_GROUP where empty); vectors (n, dim) float32.
    site_column: the column read as the site (None: none); site_values: its n values, None
    where empty.
    """

    modality: str
    vids: np.ndarray
    item_ids: list[str]
    labels: list[str]
    patients: list[str]
    groups: dict[str, list[str]]
    vectors: np.ndarray
    site_column: str | None = None
    site_values: list[str | None] | None = None

    @property
    def sites(self) -> list[str] | None:
        """Values of the site column, else of the first group column (cohort), or None without one."""
        if self.site_column is not None:
            return self.groups[self.site_column]
        return next(iter(self.groups.values()), None)

    @property
    def keys(self) -> list[str]:
        """'modality:item_id' per item: the ids the evaluator counts query/database overlap by."""
        return [f"{self.modality}:{item}" for item in self.item_ids]


@dataclass
class AtlasEvaluation:
    """One model's retrieval report, the mean-pooling baseline's on the same items (None when
    the atlas has no usable baseline), the selections, and one-line notes for the reader."""

    model_id: str
    report: object  # RetrievalReport of the model
    baseline: object | None  # RetrievalReport of mean pooling on the same items
    queries: Selection
    database: Selection
    notes: list[str] = field(default_factory=list)
    baseline_id: str | None = None
    selection: dict = field(default_factory=dict)  # label and the two SQL expressions
    regions: object | None = None  # RetrievalReport of region votes (`eval --by regions`)
    regions_method: dict | None = None
    prevalence: object | None = None  # class_highlights.Prevalence: the atlas's patients per label value

    @property
    def overlap_patients(self) -> int:
        """Query patients that also have database items (excluded for their own queries)."""
        return len(set(self.queries.patients) & set(self.database.patients))

    def to_json(self) -> dict:
        """SPEC §5's `eval --json` object (metrics, ci95, per_class, n_queries, n_database,
        definitions) plus chance and mean pooling under `baselines`, overlap and notes."""
        payload = self.report.to_dict()
        payload.update(model_id=self.model_id, query_modality=self.queries.modality,
                       target=self.database.modality, selection=dict(self.selection))
        payload["overlap"] = {"items": payload.get("n_overlap") or 0, "patients": self.overlap_patients}
        payload["baselines"] = {"chance": payload["chance"]["metrics"]}
        payload["baseline_model_id"] = self.baseline_id
        if self.baseline is not None:
            baseline = self.baseline.to_dict()
            payload["baselines"]["meanpool"] = baseline["metrics"]
            details = ("ci95", "per_class", "precision_at", "class_highlights", "site_mixing")
            payload["baseline_details"] = {"meanpool": {key: baseline[key] for key in details}}
        if self.regions is not None:
            regions = self.regions.to_dict()
            payload["baselines"]["region_votes"] = regions["metrics"]
            payload.setdefault("baseline_details", {})["region_votes"] = {
                key: regions[key] for key in ("ci95", "per_class", "precision_at", "class_highlights", "site_mixing")}
            payload["region_votes"] = self.regions_method
        payload["notes"] = list(self.notes)
        return payload


def _check_modality(modality: str, option: str) -> None:
    if modality not in MODALITIES:
        raise InputError(f"{option} {modality}: expected one of {', '.join(MODALITIES)}")


def _check_label(atlas: Atlas, label: str) -> None:
    columns = atlas.metadata_columns()
    if label not in columns:
        raise InputError(f"--label {label}: no such metadata column (columns: {', '.join(columns) or 'none'})")


def site_column_of(atlas: Atlas, requested: str | None) -> str | None:
    """The metadata column read as the site: `requested` (checked), else the first of SITE_COLUMNS
    present, else None (the report then says site mixing has no site column)."""
    columns = atlas.metadata_columns()
    if requested is not None:
        if requested not in columns:
            raise InputError(f"--site-column {requested}: no such metadata column "
                             f"(columns: {', '.join(columns) or 'none'})")
        return requested
    return next((column for column in SITE_COLUMNS if column in columns), None)


def atlas_prevalence(atlas: Atlas, label: str):
    """Distinct patients per `label` value over every item of the atlas (any modality): the
    population "rare" classes are measured in (`evaluation.class_highlights`)."""
    from threads_search.atlas.items import patients_per_value
    from threads_search.evaluation.class_highlights import Prevalence

    counts, n_patients = patients_per_value(atlas, label)
    return Prevalence(counts, n_patients, "labelled atlas patients")


def _cutoffs(ks) -> tuple[int, ...]:
    """K values as a sorted tuple (one int is accepted); the evaluator checks their values."""
    values = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not values:
        raise InputError("-k: give at least one cutoff K")
    return tuple(sorted(set(values)))


def select(atlas: Atlas, model_id: str, modality: str, label: str, sql: str | None, option: str,
           notes: list[str], site_column: str | None = None) -> Selection:
    """Items of `modality` matching `sql` that carry a label and are embedded with the model.

    Items without a label (NULL or blank) or without an embedding are left out with a note;
    an empty result is an InputError naming `option`. `site_column` (a metadata column) is
    read as the site and is one of the group columns.
    """
    where = check_where(atlas, sql, option)
    columns = set(atlas.metadata_columns())
    group_columns = [c for c in GROUP_COLUMNS if c in columns]
    if site_column is not None and site_column not in group_columns:
        group_columns.insert(0, site_column)
    table = item_table(atlas, modality, atlas.filter_vids(where, modality), [label, *group_columns])
    rows = [(int(vid), item, table.values[label][i], patient, *(table.values[c][i] for c in group_columns))
            for i, (vid, item, patient) in enumerate(zip(table.vids, table.item_ids, table.patient_ids))]
    if not rows:
        raise InputError(f"{option} \"{where.text}\" selects no {modality}" if where else f"the atlas holds no {modality}")
    labelled = [r for r in rows if r[2] is not None and r[2].strip()]
    if not labelled:
        raise InputError(f"--label {label}: empty for every one of the {len(rows)} {modality} item(s) "
                         f"selected by {option}")
    if len(labelled) < len(rows):
        notes.append(f"{len(rows) - len(labelled)} {modality} item(s) selected by {option} have no '{label}' "
                     "and are left out")
    ids, vectors = load_embeddings(atlas, model_id, modality, [r[0] for r in labelled])
    if ids.size == 0:
        raise InputError(f"no {modality} item selected by {option} is embedded with model {model_id}; run "
                         f"`threads-search embed {atlas.root} --model {model_id}` "
                         f"(needs a model with a {modality} encoder)")
    if ids.size < len(labelled):
        notes.append(f"{len(labelled) - ids.size} {modality} item(s) selected by {option} are not embedded with "
                     f"model {model_id} and are left out")
    by_vid = {r[0]: r for r in labelled}
    chosen = [by_vid[int(v)] for v in ids]
    groups = {column: [r[4 + i] if r[4 + i] is not None else MISSING_GROUP for r in chosen]
              for i, column in enumerate(group_columns)}
    site_values = None
    if site_column is not None:
        position = 4 + group_columns.index(site_column)
        site_values = [r[position] if r[position] is not None and str(r[position]).strip() else None for r in chosen]
    return Selection(modality, ids, [r[1] for r in chosen], [r[2] for r in chosen], [r[3] for r in chosen],
                     groups, vectors, site_column, site_values)


def _same_items(atlas: Atlas, model_id: str, selection: Selection) -> Selection | None:
    """The selection with another model's vectors, or None unless that model embedded every item."""
    ids, vectors = load_embeddings(atlas, model_id, selection.modality, selection.vids.tolist())
    if not np.array_equal(ids, selection.vids):
        return None
    return dataclasses.replace(selection, vectors=vectors)


def site_arguments(queries: Selection, database: Selection) -> dict:
    """The evaluator's site-mixing keywords for two selections ({} without a site column)."""
    if queries.site_column is None:
        return {}
    return {"query_sites": queries.site_values, "db_sites": database.site_values, "site_column": queries.site_column}


def _evaluate(queries: Selection, database: Selection, ks, n_bootstrap: int, seed: int, name: str, prevalence):
    from threads_search.evaluation import evaluate_retrieval

    return evaluate_retrieval(queries.vectors, queries.labels, queries.patients, database.vectors, database.labels,
                              database.patients, ks=ks, n_bootstrap=n_bootstrap, seed=seed,
                              extra_query_columns=queries.groups or None, query_ids=queries.keys,
                              db_ids=database.keys, name=name, prevalence=prevalence,
                              **site_arguments(queries, database))


def _baseline_report(atlas: Atlas, model_id: str, queries: Selection, database: Selection, ks, n_bootstrap: int,
                     seed: int, notes: list[str], prevalence):
    """(baseline model id, its RetrievalReport on the same items), or (None, None) with a note."""
    baseline_id = baseline_model_id(atlas)
    if baseline_id is None:
        notes.append(f"the atlas holds no mean-pooling baseline (`threads-search embed {atlas.root} --model meanpool` "
                     f"or `train` stores one): only chance is shown beside the model")
        return None, None
    if baseline_id == model_id:
        notes.append(f"the evaluated model {model_id} is the mean-pooling baseline itself")
        return None, None
    base_queries = _same_items(atlas, baseline_id, queries)
    base_database = _same_items(atlas, baseline_id, database)
    if base_queries is None or base_database is None:
        notes.append(f"mean-pooling baseline {baseline_id} is not embedded for every selected item; "
                     f"run `threads-search embed {atlas.root} --model {baseline_id}` to compare")
        return None, None
    if queries.modality != database.modality:
        notes.append("mean pooling has no shared slide/profile space: "
                     "its cross-modal figures are an untrained reference")
    return baseline_id, _evaluate(base_queries, base_database, ks, n_bootstrap, seed, "mean pooling", prevalence)


def evaluate_atlas(atlas: Atlas, label: str, queries_sql: str | None, database_sql: str | None,
                   query_modality: str = "slides", target: str = "slides", ks=(1, 5, 10), n_bootstrap: int = 1000,
                   seed: int = 0, model_id: str | None = None, site_column: str | None = None) -> AtlasEvaluation:
    """Retrieval metrics (SPEC §7) of a model, and of mean pooling on the same items, with
    patient-bootstrap CIs, the exact chance level, and site mixing (SPEC §13) over
    `site_column` (default: the first of SITE_COLUMNS the metadata has; none -> a note).

    Relevant = same `label` value; items of a query's own patient are never ranked for it.
    Items selected on both sides stay on both sides (reported as overlap). Region votes of the
    patch index on the same items are added by `search.region_eval.add_region_votes`.
    """
    _check_modality(query_modality, "--query-modality")
    _check_modality(target, "--target")
    queries_sql = check_where(atlas, queries_sql, "--queries")  # both filters checked before any work
    database_sql = check_where(atlas, database_sql, "--database")
    _check_label(atlas, label)
    cutoffs = _cutoffs(ks)
    model_id = resolve_model_id(atlas, model_id)
    notes: list[str] = []
    site_column = site_column_of(atlas, site_column)
    queries = select(atlas, model_id, query_modality, label, queries_sql, "--queries", notes, site_column)
    database = select(atlas, model_id, target, label, database_sql, "--database", notes, site_column)
    if max(cutoffs) > len(database.vids):
        raise InputError(f"-k {max(cutoffs)}: larger than the database ({len(database.vids)} {target} "
                         f"selected by --database)")
    recipe = model_recipe(atlas, model_id)
    prevalence = atlas_prevalence(atlas, label)
    report = _evaluate(queries, database, cutoffs, n_bootstrap, seed, f"{recipe} {model_id[:8]}", prevalence)
    baseline_id, baseline = _baseline_report(atlas, model_id, queries, database, cutoffs, n_bootstrap, seed, notes,
                                             prevalence)
    evaluation = AtlasEvaluation(model_id, report, baseline, queries, database, notes, baseline_id,
                                 {"label": label, "queries": queries_sql.text if queries_sql else None,
                                  "database": database_sql.text if database_sql else None}, prevalence=prevalence)
    if evaluation.overlap_patients:
        notes.append(f"{evaluation.overlap_patients} of the {len(set(queries.patients))} query patients also have "
                     "database items; those are never ranked for their own patient's queries")
    return evaluation


def _plotted_items(queries: Selection, database: Selection) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Vectors, labels and sites of every evaluated item once (queries, then database items
    that are not also queries)."""
    extra = np.ones(len(database.vids), dtype=bool)
    if database.modality == queries.modality:
        extra = ~np.isin(database.vids, queries.vids)
    vectors = np.concatenate([queries.vectors, database.vectors[extra]])
    labels = queries.labels + [label for label, keep in zip(database.labels, extra) if keep]
    if queries.sites is None or database.sites is None:
        return vectors, labels, None
    return vectors, labels, queries.sites + [site for site, keep in zip(database.sites, extra) if keep]


def write_evaluation(evaluation: AtlasEvaluation, json_path: Path | None, plots_dir: Path | None) -> list[Path]:
    """The JSON report and the PNG plots (per-class mAP@K, precision@K, embedding projection);
    returns the paths written."""
    from threads_search.atomic import write_json_atomic

    written = []
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, evaluation.to_json())
        written.append(json_path)
    if plots_dir is not None:
        from threads_search.evaluation import write_plots

        reports = [evaluation.report] + ([evaluation.baseline] if evaluation.baseline is not None else [])
        vectors, labels, sites = _plotted_items(evaluation.queries, evaluation.database)
        ks = evaluation.report.ks
        written += write_plots(reports, Path(plots_dir), k=5 if 5 in ks else None, embeddings=vectors,
                               embedding_labels=labels, embedding_sites=sites)
    return written


def fewshot_atlas(atlas: Atlas, label: str, train_sql: str, test_sql: str, shots=(1, 2, 4, 8, 16), n_repeats: int = 10,
                  seed: int = 0, model_id: str | None = None, modality: str = "slides"):
    """Prototype classification vs a linear probe from k labelled items per class.

    Returns (model id, FewShotCurve, notes). Train/test overlap is reported, not removed.
    """
    from threads_search.evaluation import fewshot_curve

    _check_modality(modality, "--modality")
    train_sql, test_sql = check_where(atlas, train_sql, "--train"), check_where(atlas, test_sql, "--test")
    _check_label(atlas, label)
    model_id = resolve_model_id(atlas, model_id)
    notes: list[str] = []
    train = select(atlas, model_id, modality, label, train_sql, "--train", notes)
    test = select(atlas, model_id, modality, label, test_sql, "--test", notes)
    shared_items = set(train.item_ids) & set(test.item_ids)
    if shared_items:
        notes.append(f"{len(shared_items)} item(s) are in both --train and --test (e.g. {sorted(shared_items)[0]}): "
                     "the figures are optimistic")
    overlap = set(train.patients) & set(test.patients)
    if overlap:
        notes.append(f"{len(overlap)} patient(s) are in both --train and --test (e.g. {sorted(overlap)[0]})")
    curve = fewshot_curve(train.vectors, train.labels, test.vectors, test.labels, shots=shots, n_repeats=n_repeats,
                          seed=seed)
    return model_id, curve, notes
