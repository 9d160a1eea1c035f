"""Patient bootstrap: intervals cover the estimate, shrink with data, resample patients."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation import evaluate_retrieval
from threads_search.evaluation.bootstrap import patient_bootstrap_ci


def _ci_width(n_patients: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    values = rng.random(n_patients) < 0.6
    bounds = patient_bootstrap_ci(values.astype(float), np.arange(n_patients), 500, seed=seed)
    return float(bounds[0, 1] - bounds[0, 0])


def test_interval_shrinks_with_more_patients():
    # Bernoulli(0.6) means: width ~ 2 * 1.96 * sqrt(0.24 / n) -> 0.30 at n = 40, 0.096 at 400
    small, large = _ci_width(40, 0), _ci_width(400, 0)
    assert small == pytest.approx(2 * 1.96 * np.sqrt(0.24 / 40), rel=0.25)
    assert large == pytest.approx(2 * 1.96 * np.sqrt(0.24 / 400), rel=0.25)


def test_resamples_patients_not_queries():
    # Ten identical queries per patient carry no more information than one: same interval.
    rng = np.random.default_rng(1)
    per_patient = rng.random(30)
    one_each = patient_bootstrap_ci(per_patient, np.arange(30), 300, seed=4)
    ten_each = patient_bootstrap_ci(np.repeat(per_patient, 10), np.repeat(np.arange(30), 10), 300, seed=4)
    np.testing.assert_allclose(one_each, ten_each, atol=1e-12)
    # ... whereas treating the 300 queries as independent would narrow it about sqrt(10) times
    as_queries = patient_bootstrap_ci(np.repeat(per_patient, 10), np.arange(300), 300, seed=4)
    assert (as_queries[0, 1] - as_queries[0, 0]) < 0.5 * (one_each[0, 1] - one_each[0, 0])


def test_two_patients_by_hand():
    # Replicate means are 0, 1/2, 1 with probability 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    bounds = patient_bootstrap_ci(np.array([0.0, 1.0]), ["a", "b"], 2000, seed=0)
    np.testing.assert_allclose(bounds, [[0.0, 1.0]])


def test_seeded():
    values = np.random.default_rng(2).random((50, 3))
    first = patient_bootstrap_ci(values, np.arange(50) // 2, 200, seed=7)
    np.testing.assert_array_equal(first, patient_bootstrap_ci(values, np.arange(50) // 2, 200, seed=7))
    assert not np.array_equal(first, patient_bootstrap_ci(values, np.arange(50) // 2, 200, seed=8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_intervals_cover_the_estimates_and_shrink_with_more_queries(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8))

    def cohort(n: int, offset: int):
        labels = rng.integers(0, 3, size=n)
        return centres[labels] + 1.5 * rng.normal(size=(n, 8)), labels, np.arange(offset, offset + n)

    db_vectors, db_labels, db_patients = cohort(200, 0)
    widths = []
    for n_queries in (30, 300):
        queries, labels, patients = cohort(n_queries, 1000)
        report = evaluate_retrieval(
            queries, labels, patients, db_vectors, db_labels, db_patients, ks=(1, 5, 10), n_bootstrap=300, seed=seed
        )
        for table in (report.model, report.chance):
            for key, value in table.metrics.items():
                low, high = table.ci95[key]
                assert low <= value <= high, key
            for label, row in table.per_class.items():
                for key, (low, high) in table.per_class_ci95[label].items():
                    assert low <= row[key] <= high, (label, key)
        widths.append(np.mean([high - low for low, high in report.model.ci95.values()]))
    assert widths[1] < 0.6 * widths[0]


def test_bad_arguments():
    with pytest.raises(InputError, match="n_bootstrap"):
        patient_bootstrap_ci(np.ones(3), np.arange(3), -1)
    assert np.isnan(patient_bootstrap_ci(np.ones(3), np.arange(3), 0)).all()
