"""Few-shot curve: prototype vs linear probe on the same draws."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation.fewshot import balanced_accuracy, fewshot_curve, macro_auroc


def _separable(seed: int, n_per_class=(30, 30, 30, 5), n_test_per_class=20, dim=12, noise=0.3):
    """Well-separated classes: orthogonal centres plus small noise."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(n_per_class)] * 3

    def sample(counts):
        labels = np.repeat([f"class{c}" for c in range(len(counts))], counts)
        codes = np.repeat(np.arange(len(counts)), counts)
        return centres[codes] + noise * rng.normal(size=(len(codes), dim)), labels

    train, train_labels = sample(n_per_class)
    test, test_labels = sample([n_test_per_class] * len(n_per_class))
    return train, train_labels, test, test_labels


@pytest.fixture(scope="module")
def curve():
    train, train_labels, test, test_labels = _separable(0)
    return fewshot_curve(train, train_labels, test, test_labels, shots=(1, 4, 8), n_repeats=3, seed=0), (
        train,
        train_labels,
        test,
        test_labels,
    )


def test_separable_data_reaches_high_balanced_accuracy(curve):
    result, _ = curve
    for method in ("prototype", "linear_probe"):
        mean, std = result.summary(method, "balanced_accuracy")
        assert (mean >= 0.95).all(), method
        auroc, _ = result.summary(method, "macro_auroc")
        assert (auroc >= 0.98).all(), method
        assert mean.shape == std.shape == (3,)


def test_draw_sizes_and_short_classes(curve):
    result, (_, train_labels, _, _) = curve
    for shot, shot_draws in zip(result.shots, result.draws):
        for rows in shot_draws:
            drawn = train_labels[rows]
            for label, available in zip(*np.unique(train_labels, return_counts=True)):
                assert (drawn == label).sum() == min(shot, available)
    assert result.short_classes == {1: {}, 4: {}, 8: {"class3": 5}}
    assert result.notes == ("k=8: class 'class3' has only 5 training items and uses all of them",)
    assert len({tuple(rows) for rows in result.draws[1]}) == 3  # repeats are fresh draws


def test_both_methods_are_scored_on_the_recorded_draws(curve):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    result, (train, train_labels, test, test_labels) = curve
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    classes = np.unique(train_labels)
    for i, shot_draws in enumerate(result.draws):
        for r, rows in enumerate(shot_draws):
            prototypes = np.stack([train[rows][train_labels[rows] == c].mean(axis=0) for c in classes])
            predicted = classes[np.argmax(test @ prototypes.T, axis=1)]  # argmax ignores prototype norm
            assert result.scores["prototype"]["balanced_accuracy"][i, r] == pytest.approx(
                balanced_accuracy_score(test_labels, predicted)
            )
            probe = LogisticRegression(class_weight="balanced", max_iter=1000).fit(train[rows], train_labels[rows])
            assert result.scores["linear_probe"]["balanced_accuracy"][i, r] == pytest.approx(
                balanced_accuracy_score(test_labels, probe.predict(test))
            )


def test_to_dict_reports_mean_and_std(curve):
    result, _ = curve
    data = result.to_dict()
    values = result.scores["prototype"]["balanced_accuracy"][1]
    assert data["methods"]["prototype"]["balanced_accuracy"]["mean"][1] == pytest.approx(values.mean())
    assert data["methods"]["prototype"]["balanced_accuracy"]["std"][1] == pytest.approx(values.std())
    assert data["short_classes"]["8"] == {"class3": 5}
    assert data["n_repeats"] == 3


def test_test_class_missing_from_training_counts_as_error():
    train, train_labels, test, test_labels = _separable(1, n_per_class=(20, 20, 20))
    test_labels = test_labels.copy()
    test_labels[:20] = "unseen"  # class0's test rows now carry a label never trained on
    result = fewshot_curve(train, train_labels, test, test_labels, shots=(4,), n_repeats=2)
    mean, _ = result.summary("prototype", "balanced_accuracy")
    # test classes: 'unseen' (recall 0), class1 and class2 (perfect) -> 2/3
    assert mean[0] == pytest.approx(2 / 3, abs=0.02)
    assert any("'unseen'" in note for note in result.notes)


def test_macro_auroc_matches_sklearn_one_vs_rest():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, size=60)
    scores = rng.random((60, 3))
    probabilities = scores / scores.sum(axis=1, keepdims=True)
    expected = roc_auc_score(truth, probabilities, multi_class="ovr", average="macro")
    assert macro_auroc(truth, probabilities) == pytest.approx(expected)
    assert balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(0.75)


def test_bad_input():
    train, train_labels, test, test_labels = _separable(3)
    with pytest.raises(InputError, match="at least 2 classes"):
        fewshot_curve(train, ["a"] * len(train), test, test_labels)
    with pytest.raises(InputError, match="shots"):
        fewshot_curve(train, train_labels, test, test_labels, shots=(0,))
    with pytest.raises(InputError, match="dimension 12 but test_vectors has 3"):
        fewshot_curve(train, train_labels, test[:, :3], test_labels)
