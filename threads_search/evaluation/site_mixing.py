"""Site mixing (SPEC §13): does a ranking lean on the site (scanner, stain, batch) of the query?

For query q from site s_q with eligible database E_q (the database selected for the
evaluation, minus the items of q's own patient) and top-K hits H_q (K ranked items, fewer when
E_q is smaller):

    database_share_q = |{i in E_q : site_i = s_q}| / |E_q|
    hit_share_q      = |{i in H_q : site_i = s_q}| / |H_q|
    site_mixing_q    = hit_share_q / database_share_q

1.0 = the hits come from the query's site as often as the database does (no site preference);
above 1 = the ranking favours the query's own site (up to 1 / database_share_q when every hit
is from it); below 1 = it avoids it. A uniformly random ranking has expectation exactly 1.0
(the hit share of a random draw without replacement is the database share). The figure is
undefined (left out, counted in `n_undefined`) for a query whose site is unknown or has no
eligible database item. `other_site_mixing_q` = (1 - hit_share_q) / (1 - database_share_q) is
the same question asked of the other sites (1.0 = none, below 1 = other sites under-retrieved);
undefined when every eligible item is from the query's site. Summaries are means over the
queries where the figure is defined: overall, per query site, with a patient-bootstrap 95% CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from threads_search.errors import InputError
from threads_search.evaluation.bootstrap import patient_bootstrap_ci
from threads_search.evaluation.report import Interval

KEY = "site_mixing"
OTHER_KEY = "other_site_mixing"
DEFINITION = (
    "mean over queries of (share of the top K hits from the query's own site) / "
    "(that site's share of the query's eligible database: the selected database minus the query's "
    "own patient); 1.0 = no site preference, higher = leaning on the site; chance = 1.0; queries "
    "whose site is unknown or absent from their eligible database are left out (n_undefined)"
)


@dataclass(frozen=True)
class SiteMixingQueries:
    """Per-query figures at one cutoff K: (q,) float64 each, NaN where undefined."""

    mixing: np.ndarray
    other_mixing: np.ndarray
    hit_share: np.ndarray
    database_share: np.ndarray


def site_mixing_per_query(
    ranking: np.ndarray,
    query_sites: np.ndarray,
    db_sites: np.ndarray,
    query_patients: np.ndarray,
    db_patients: np.ndarray,
    k: int,
) -> SiteMixingQueries:
    """Site mixing of each query's top k.

    ranking: (q, >= k) int64 database rows best first, -1 = padding (no row of the query's own
    patient). query_sites (q,) / db_sites (n,): int64 site codes shared by both sides, -1 =
    unknown. query_patients (q,) / db_patients (n,): int64 patient codes shared by both sides.
    """
    n_sites = int(max(query_sites.max(initial=-1), db_sites.max(initial=-1))) + 1
    n_patients = int(max(query_patients.max(), db_patients.max())) + 1
    # Column n_sites holds database items of unknown site: eligible, never the query's site.
    db_columns = np.where(db_sites >= 0, db_sites, n_sites)
    per_patient = np.zeros((n_patients, n_sites + 1), dtype=np.int64)
    np.add.at(per_patient, (db_patients, db_columns), 1)
    eligible = per_patient.sum(axis=0)[None, :] - per_patient[query_patients]  # (q, n_sites + 1)
    known = query_sites >= 0
    own_site = np.where(known, query_sites, n_sites)
    n_eligible = eligible.sum(axis=1)
    own_eligible = np.where(known, np.take_along_axis(eligible, own_site[:, None], axis=1)[:, 0], 0)

    top = ranking[:, :k]
    present = top >= 0
    hit_sites = np.where(present, db_sites[np.maximum(top, 0)], -1)
    own_hits = (present & (hit_sites == query_sites[:, None]) & known[:, None]).sum(axis=1)
    n_hits = present.sum(axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        database_share = np.where(n_eligible > 0, own_eligible / n_eligible, np.nan)
        hit_share = np.where(n_hits > 0, own_hits / n_hits, np.nan)
        defined = known & (own_eligible > 0) & (n_hits > 0)
        mixing = np.where(defined, hit_share / database_share, np.nan)
        others_defined = defined & (own_eligible < n_eligible)
        other_mixing = np.where(others_defined, (1.0 - hit_share) / (1.0 - database_share), np.nan)
    database_share = np.where(known, database_share, np.nan)
    hit_share = np.where(known, hit_share, np.nan)
    return SiteMixingQueries(mixing, other_mixing, hit_share, database_share)


@dataclass(frozen=True)
class SiteMixing:
    """Site mixing of one ranking at every cutoff K (keys 'site_mixing@5', ...).

    column: the metadata column read as the site. overall / other_sites: mean over defined
    queries. ci95: patient-bootstrap interval of `overall`. per_site: query site -> {'site_mixing@K':
    mean, 'hit_share@K', 'database_share' (means over the site's queries), 'n_queries',
    'n_undefined'}. n_undefined: queries left out (at the largest K). per_query:
    'site_mixing@K' -> (q,) float64 per-query values, NaN where undefined.
    """

    column: str
    overall: dict[str, float]
    ci95: dict[str, Interval]
    other_sites: dict[str, float]
    per_site: dict[str, dict[str, float]]
    n_undefined: int
    definition: str = DEFINITION
    per_query: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from threads_search.evaluation.report import clean

        return clean({"column": self.column, "overall": self.overall, "ci95": self.ci95,
                      "other_sites": self.other_sites, "per_site": self.per_site,
                      "n_undefined": self.n_undefined, "definition": self.definition})


def summarise_site_mixing(
    ranking: np.ndarray,
    query_sites: Any,
    db_sites: Any,
    query_patient_codes: np.ndarray,
    db_patient_codes: np.ndarray,
    query_patient_keys: np.ndarray,
    ks: tuple[int, ...],
    n_bootstrap: int,
    seed: int,
    column: str = "site",
) -> SiteMixing:
    """Site mixing at every K in `ks` for a checked ranking (q, >= max K).

    query_sites (q,) / db_sites (n,): site values of any printable type, None (or NaN) =
    unknown. query_patient_keys: (q,) str patient ids, the bootstrap's resampling unit.
    """
    query_codes, db_codes, vocabulary = _site_codes(query_sites, db_sites, len(ranking), len(db_patient_codes))
    per_query = {
        k: site_mixing_per_query(ranking, query_codes, db_codes, query_patient_codes, db_patient_codes, k)
        for k in ks
    }
    overall, ci95, other_sites, table = {}, {}, {}, {}
    for k, figures in per_query.items():
        key = f"{KEY}@{k}"
        defined = ~np.isnan(figures.mixing)
        overall[key] = _mean(figures.mixing)
        other_sites[f"{OTHER_KEY}@{k}"] = _mean(figures.other_mixing)
        bounds = patient_bootstrap_ci(figures.mixing[defined], query_patient_keys[defined], n_bootstrap, seed)
        ci95[key] = (float(bounds[0, 0]), float(bounds[0, 1]))
        table[key] = figures.mixing
    per_site: dict[str, dict[str, float]] = {}
    largest = per_query[max(ks)]
    for code, site in enumerate(vocabulary):
        members = query_codes == code
        if not members.any():
            continue
        row: dict[str, float] = {}
        for k, figures in per_query.items():
            row[f"{KEY}@{k}"] = _mean(figures.mixing[members])
            row[f"hit_share@{k}"] = _mean(figures.hit_share[members])
        row["database_share"] = _mean(largest.database_share[members])
        row["n_queries"] = int(members.sum())
        row["n_undefined"] = int(np.isnan(largest.mixing[members]).sum())
        per_site[site] = row
    return SiteMixing(column=column, overall=overall, ci95=ci95, other_sites=other_sites, per_site=per_site,
                      n_undefined=int(np.isnan(largest.mixing).sum()), per_query=table)


def _site_codes(query_sites: Any, db_sites: Any, n_queries: int, n_database: int):
    """Shared int64 codes of both sides' sites (-1 = unknown) and the sorted site names."""
    query_values = _site_values(query_sites, n_queries, "query_sites")
    db_values = _site_values(db_sites, n_database, "db_sites")
    vocabulary = sorted({v for v in query_values + db_values if v is not None})
    code_of = {site: code for code, site in enumerate(vocabulary)}
    query_codes = np.array([code_of.get(v, -1) if v is not None else -1 for v in query_values], dtype=np.int64)
    db_codes = np.array([code_of.get(v, -1) if v is not None else -1 for v in db_values], dtype=np.int64)
    return query_codes, db_codes, vocabulary


def _site_values(values: Any, n_rows: int, name: str) -> list[str | None]:
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if len(items) != n_rows:
        raise InputError(f"{name}: has {len(items)} entries but there are {n_rows} items")
    return [None if item is None or (isinstance(item, float) and np.isnan(item)) else str(item) for item in items]


def _mean(values: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
