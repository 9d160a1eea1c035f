"""`eval --by regions`: slide -> slide retrieval through region votes, on the same queries and
database as the slide-embedding evaluation, scored by the same evaluator (metrics, CIs).

Each query slide's indexed patches (all of them, or its mosaic) are searched in the patch
index among the database slides, its own patient's slides excluded; their top hits vote for
their slides (`search.regions.slide_votes`); the slides ranked by votes are the ranking.
"""

from __future__ import annotations

import numpy as np

from threads_search.atlas.patch_indexes import patient_slide_vids
from threads_search.atlas.store import Atlas
from threads_search.errors import InputError

# Query patches per slide at most (evenly spread over its indexed patches).
MAX_QUERY_PATCHES = 1024


def region_vote_ranking(atlas: Atlas, query_vids: np.ndarray, query_patients: list[str], database_vids: np.ndarray,
                        depth: int, votes_per_patch: int, notes: list[str]) -> tuple[np.ndarray, dict]:
    """(q, depth) database rows ranked by region votes (-1 padding), and a description."""
    from threads_search.indexer.patch_ids import slide_id_range
    from threads_search.jobs.patch_index import open_patch_index
    from threads_search.search.regions import RegionSearcher, slide_votes

    if query_vids.dtype.kind not in "iu":
        raise InputError("query vids must be integers")
    searcher = RegionSearcher(atlas, open_patch_index(atlas))
    index = searcher.opened.index
    database_sorted = np.sort(database_vids)
    row_of = {int(v): i for i, v in enumerate(database_vids)}
    ranking = np.full((query_vids.size, depth), -1, np.int64)
    missing_queries, patches_used = 0, []
    try:
        held, _ = index.held_slides()
        not_indexed = np.setdiff1d(database_sorted, held)
        if not_indexed.size:
            notes.append(f"{not_indexed.size} database slide(s) have no patches in the patch index and get no "
                         "region votes; rebuild it with `threads-search index ATLAS --level patches`")
        for row, (vid, patient) in enumerate(zip(query_vids.tolist(), query_patients)):
            patch_ids = index.ids_between(*slide_id_range(vid))
            if patch_ids.size == 0:
                missing_queries += 1
                continue
            if patch_ids.size > MAX_QUERY_PATCHES:
                patch_ids = patch_ids[np.linspace(0, patch_ids.size - 1, MAX_QUERY_PATCHES).round().astype(int)]
            vectors, readable = searcher.opened.source.vectors(patch_ids)
            if not readable.any():
                missing_queries += 1
                continue
            excluded = np.union1d(patient_slide_vids(atlas, [patient]), [vid])
            scores, ids = searcher.search(vectors[readable], votes_per_patch, database_sorted, excluded)
            vids, _, _ = slide_votes(scores, ids)
            ranked = [row_of[int(v)] for v in vids if int(v) in row_of][:depth]
            ranking[row, :len(ranked)] = ranked
            patches_used.append(int(readable.sum()))
    finally:
        searcher.close()
    notes.extend(searcher.notes)
    if missing_queries:
        notes.append(f"{missing_queries} query slide(s) have no patches in the patch index: their region-vote "
                     "ranking is empty (every metric counts them as misses)")
    description = {
        "method": "each query patch's top hits vote for their slides with weight (similarity - the patch's "
                  "lowest returned similarity)^2 / log2(1 + rank), averaged over the query patches; slides ranked "
                  "by vote score, ties by vid",
        "votes_per_patch": votes_per_patch,
        "query_patches_per_slide": {"median": float(np.median(patches_used)) if patches_used else 0,
                                    "max": MAX_QUERY_PATCHES},
        "patch_index": {"kind": index.sidecar["kind"], "factory": index.sidecar["factory"],
                        "count": index.count, "mosaic": index.sidecar.get("mosaic")},
    }
    return ranking, description


def evaluate_by_regions(atlas: Atlas, queries, database, ks, n_bootstrap: int, seed: int, notes: list[str],
                        votes_per_patch: int | None = None, prevalence=None):
    """RetrievalReport of region-vote retrieval for two `jobs.evaluate.Selection`s (slides),
    and the method's description."""
    from threads_search.evaluation import evaluate_ranking
    from threads_search.jobs.evaluate import site_arguments
    from threads_search.search.regions import DEFAULT_VOTES_PER_PATCH

    votes_per_patch = votes_per_patch or DEFAULT_VOTES_PER_PATCH
    if queries.modality != "slides" or database.modality != "slides":
        raise InputError("--by regions evaluates slide -> slide retrieval: use --query-modality slides --target slides")
    ranking, description = region_vote_ranking(atlas, queries.vids, queries.patients, database.vids, max(ks),
                                                votes_per_patch, notes)
    report = evaluate_ranking(ranking, queries.labels, queries.patients, database.labels, database.patients, ks=ks,
                              n_bootstrap=n_bootstrap, seed=seed, extra_query_columns=queries.groups or None,
                              query_ids=queries.keys, db_ids=database.keys, name="region votes",
                              prevalence=prevalence, **site_arguments(queries, database))
    return report, description


def add_region_votes(atlas: Atlas, evaluation, ks, n_bootstrap: int, seed: int):
    """`eval --by regions`: region-vote retrieval on an evaluation's own queries and database, added to it."""
    from threads_search.jobs.evaluate import _cutoffs

    evaluation.regions, evaluation.regions_method = evaluate_by_regions(
        atlas, evaluation.queries, evaluation.database, _cutoffs(ks), n_bootstrap, seed, evaluation.notes,
        prevalence=evaluation.prevalence)
    return evaluation
