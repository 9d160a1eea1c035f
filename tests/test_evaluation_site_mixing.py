"""Site mixing and the worst / rare classes of a report, on hand-built rankings worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation import evaluate_ranking
from threads_search.evaluation.class_highlights import Prevalence, class_highlights, describe_highlights

# Database: row -> (site, patient, label).
DB_SITES = ["A", "A", "B", "B", "B", "C"]
DB_PATIENTS = ["p1", "p2", "p3", "p4", "p5", "p6"]
DB_LABELS = ["x", "y", "x", "y", "x", "y"]
# Queries: q0 is patient p1 (its database row 0 is excluded), the others are new patients;
# q3's site D has no database item, q4's site is unknown.
Q_SITES = ["A", "B", "C", "D", None]
Q_PATIENTS = ["p1", "p7", "p8", "p9", "p10"]
Q_LABELS = ["x", "y", "x", "y", "x"]
RANKING = np.array([
    [1, 2, 3],  # q0: eligible rows 1-5, site A = 1 of 5; hits A, B, B
    [2, 3, 4],  # q1: eligible rows 0-5, site B = 3 of 6; hits B, B, B
    [0, 1, 2],  # q2: eligible rows 0-5, site C = 1 of 6; hits A, A, B
    [0, 2, 5],  # q3: site D absent from the database: undefined
    [0, 2, 5],  # q4: site unknown: undefined
])


def report(**sites):
    sites = {"query_sites": Q_SITES, "db_sites": DB_SITES, **sites}
    return evaluate_ranking(RANKING, Q_LABELS, Q_PATIENTS, DB_LABELS, DB_PATIENTS, ks=(1, 3), n_bootstrap=200, **sites)


def test_site_mixing_equals_the_hand_computation():
    mixing = report().site_mixing
    # K = 3: q0 (1/3) / (1/5) = 5/3; q1 (3/3) / (3/6) = 2; q2 (0/3) / (1/6) = 0.
    # K = 1: q0 1 / (1/5) = 5;       q1 1 / (1/2) = 2;     q2 0.
    assert mixing.overall["site_mixing@3"] == pytest.approx((5 / 3 + 2 + 0) / 3, abs=1e-12)
    assert mixing.overall["site_mixing@1"] == pytest.approx((5 + 2 + 0) / 3, abs=1e-12)
    # Other sites, (1 - hit share) / (1 - database share) at K = 3: q0 (2/3) / (4/5) = 5/6;
    # q1 0 / (1/2) = 0; q2 1 / (5/6) = 6/5.
    assert mixing.other_sites["other_site_mixing@3"] == pytest.approx((5 / 6 + 0 + 6 / 5) / 3, abs=1e-12)
    assert mixing.n_undefined == 2
    per_site = mixing.per_site
    assert sorted(per_site) == ["A", "B", "C", "D"]  # the unknown site has no row
    assert per_site["A"]["site_mixing@3"] == pytest.approx(5 / 3)
    assert per_site["A"]["database_share"] == pytest.approx(1 / 5)
    assert per_site["A"]["hit_share@3"] == pytest.approx(1 / 3)
    assert per_site["B"]["site_mixing@3"] == pytest.approx(2.0) and per_site["B"]["database_share"] == 0.5
    assert per_site["C"]["site_mixing@3"] == 0.0 and per_site["C"]["database_share"] == pytest.approx(1 / 6)
    assert np.isnan(per_site["D"]["site_mixing@3"]) and per_site["D"]["n_undefined"] == 1
    assert per_site["D"]["database_share"] == 0.0
    low, high = mixing.ci95["site_mixing@3"]
    assert low <= mixing.overall["site_mixing@3"] <= high
    np.testing.assert_allclose(report().per_query["site_mixing@3"], [5 / 3, 2, 0, np.nan, np.nan])


def test_site_mixing_reaches_the_json_with_null_for_undefined_sites():
    payload = report().to_dict()
    mixing = payload["site_mixing"]
    assert mixing["column"] == "site" and mixing["n_undefined"] == 2
    assert mixing["per_site"]["D"]["site_mixing@3"] is None
    assert mixing["overall"]["site_mixing@3"] == pytest.approx(11 / 9)
    assert "1.0 = no site preference" in payload["definitions"]["site_mixing@K"]
    assert evaluate_ranking(RANKING, Q_LABELS, Q_PATIENTS, DB_LABELS, DB_PATIENTS, ks=(3,),
                            n_bootstrap=0).to_dict()["site_mixing"] is None


def test_a_random_ranking_has_site_mixing_one_on_average():
    rng = np.random.default_rng(0)
    n, q, k = 60, 4000, 5
    db_sites = ["A"] * 30 + ["B"] * 20 + ["C"] * 10
    ranking = np.argsort(rng.random((q, n)), axis=1)[:, :k]
    figures = evaluate_ranking(ranking, ["x"] * q, [f"q{i}" for i in range(q)], ["x"] * n, [f"d{i}" for i in range(n)],
                               ks=(k,), n_bootstrap=0, query_sites=rng.choice(["A", "B", "C"], size=q).tolist(),
                               db_sites=db_sites).site_mixing
    # Expectation exactly 1; the standard error here is about 0.02.
    assert figures.overall[f"site_mixing@{k}"] == pytest.approx(1.0, abs=0.06)
    for site in "ABC":
        assert figures.per_site[site][f"site_mixing@{k}"] == pytest.approx(1.0, abs=0.12)


def test_site_arrays_must_come_in_pairs_and_match_their_side():
    with pytest.raises(InputError, match="give both site arrays or neither"):
        evaluate_ranking(RANKING, Q_LABELS, Q_PATIENTS, DB_LABELS, DB_PATIENTS, ks=(3,), n_bootstrap=0,
                         query_sites=Q_SITES)
    with pytest.raises(InputError, match="db_sites: has 5 entries but there are 6 items"):
        report(db_sites=DB_SITES[:5])


def test_worst_and_rare_classes_are_listed_beside_the_mean():
    per_class = {
        "common": {"mAP@5": 0.9, "n_queries": 40},
        "middling": {"mAP@5": 0.5, "n_queries": 20},
        "poor": {"mAP@5": 0.2, "n_queries": 10},
        "rare": {"mAP@5": 0.1, "n_queries": 2, "attainable": {"mAP@5": 0.6}},
        "rarest": {"mAP@5": None, "n_queries": 0},  # no queries: not among the worst, still rare
    }
    prevalence = Prevalence({"common": 120, "middling": 60, "poor": 30, "rare": 10, "rarest": 3}, 200, "atlas patients")
    highlights = class_highlights(per_class, "mAP@5", prevalence)
    assert [e["class"] for e in highlights["worst"]] == ["rare", "poor", "middling"]
    # Rare: <= 5% of 200 patients = at most 10 patients; rarest first.
    assert [e["class"] for e in highlights["rare"]] == ["rarest", "rare"]
    assert highlights["rare"][1] == {"class": "rare", "mAP@5": 0.1, "n_queries": 2, "prevalence_patients": 10,
                                     "prevalence_share": 0.05, "attainable": 0.6}
    worst, rare = describe_highlights(highlights)
    assert worst == ("worst classes by mAP@5: rare 0.100 (2 queries, 10 patients, at most 0.600), poor 0.200 "
                     "(10 queries, 30 patients), middling 0.500 (20 queries, 60 patients)")
    assert rare == ("rare classes (<= 5% of 200 atlas patients): rarest - (0 queries, 3 patients), "
                    "rare 0.100 (2 queries, 10 patients, at most 0.600)")


def test_attainable_is_what_a_perfect_ranking_scores_per_class():
    """A class whose queries have fewer than K relevant items outside their own patient cannot reach 1."""
    from threads_search.evaluation.retrieval import evaluate_ranking

    # Database: a, a, b, b, b, b (patients d1..d6); queries: one a, one b (new patients).
    db_labels, db_patients = ["a", "a", "b", "b", "b", "b"], ["d1", "d2", "d3", "d4", "d5", "d6"]
    perfect = np.array([[0, 1, 2, 3, 4], [2, 3, 4, 5, 0]])
    result = evaluate_ranking(perfect, ["a", "b"], ["q1", "q2"], db_labels, db_patients, ks=(1, 5), n_bootstrap=0)
    payload = result.to_dict()
    assert payload["per_class"]["a"]["attainable"] == {"mAP@1": 1.0, "mAP@5": 2 / 5}
    assert payload["per_class"]["b"]["attainable"] == {"mAP@1": 1.0, "mAP@5": 4 / 5}
    for label in ("a", "b"):  # the perfect ranking reaches it exactly
        assert payload["per_class"][label]["mAP@5"] == pytest.approx(payload["per_class"][label]["attainable"]["mAP@5"])


def test_report_highlights_count_distinct_patients_on_both_sides():
    payload = report().to_dict()
    # Patients: p1..p6 in the database, p7..p10 new queries: 10 in all; x is carried by
    # p1, p3, p5 (database) and p8, p10 (queries), y by p2, p4, p6, p7, p9.
    assert payload["per_class"]["x"]["n_patients"] == 5 and payload["per_class"]["y"]["n_patients"] == 5
    highlights = payload["class_highlights"]["mAP@3"]
    assert highlights["prevalence"] == {"n_patients": 10, "scope": "evaluated patients"}
    assert highlights["rare"] == []
    assert [e["class"] for e in highlights["worst"]] == sorted(
        payload["per_class"], key=lambda c: (payload["per_class"][c]["mAP@3"], c))
