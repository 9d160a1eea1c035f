"""Few-shot label efficiency (THREADS' claim): prototypes versus a linear probe, k shots per class.

For each k and repeat, k training items per class are drawn once; both classifiers are fitted
on that same draw and scored on the whole test set, so their difference is not sampling noise.
- prototype: mean of the class's L2-normalised training embeddings; predict the class whose
  prototype has the highest cosine similarity (the similarities are the AUROC scores);
- linear probe: scikit-learn logistic regression, class_weight='balanced', on the same
  L2-normalised embeddings (predicted probabilities are the AUROC scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from threads_search.errors import InputError
from threads_search.evaluation._inputs import as_keys, as_vectors, l2_normalised

METHODS = ("prototype", "linear_probe")
SCORES = ("balanced_accuracy", "macro_auroc")

FEWSHOT_DEFINITIONS = {
    "balanced_accuracy": "mean over test classes of the recall of that class",
    "macro_auroc": "mean one-vs-rest AUROC over classes present in the training draw and having "
    "both positives and negatives in the test set",
    "std": "standard deviation over repeats (ddof=0); each repeat is a fresh draw of k shots",
    "short_classes": "classes with fewer than k training items use all they have",
}


@dataclass(frozen=True)
class FewShotCurve:
    """Per-repeat scores of both methods at every shot count.

    shots: the k values; classes: training classes (sorted).
    scores: method -> metric -> (n_shots, n_repeats) float64; metric is 'balanced_accuracy'
        or 'macro_auroc' (NaN when no class could be scored).
    draws: draws[i][r] = (n_drawn,) int64 training rows used at shots[i], repeat r, by both.
    short_classes: k -> {class: training items available} for classes with fewer than k.
    notes: one-line remarks (test classes never seen in training ...).
    """

    shots: tuple[int, ...]
    classes: tuple[str, ...]
    scores: dict[str, dict[str, np.ndarray]]
    draws: tuple[tuple[np.ndarray, ...], ...] = field(repr=False)
    short_classes: dict[int, dict[str, int]]
    notes: tuple[str, ...]

    def summary(self, method: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over repeats, each (n_shots,), ignoring NaN repeats."""
        values = self.scores[method][metric]
        finite = np.isfinite(values)
        counts = finite.sum(axis=1)
        filled = np.where(finite, values, 0.0)
        undefined = np.full(len(values), np.nan)
        mean = np.divide(filled.sum(axis=1), counts, out=undefined.copy(), where=counts > 0)
        squared = np.where(finite, (values - mean[:, None]) ** 2, 0.0).sum(axis=1)
        std = np.sqrt(np.divide(squared, counts, out=undefined.copy(), where=counts > 0))
        return mean, std

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: mean and std per method, metric and shot count."""

        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        methods = {}
        for method in self.scores:
            methods[method] = {}
            for metric in self.scores[method]:
                mean, std = self.summary(method, metric)
                methods[method][metric] = {"mean": listed(mean), "std": listed(std)}
        return {
            "shots": list(self.shots),
            "n_repeats": len(self.draws[0]) if self.draws else 0,
            "classes": list(self.classes),
            "methods": methods,
            "short_classes": {str(k): dict(v) for k, v in self.short_classes.items()},
            "notes": list(self.notes),
            "definitions": dict(FEWSHOT_DEFINITIONS),
        }


def draw_shots(
    train_codes: np.ndarray, n_classes: int, shots: Sequence[int], n_repeats: int, seed: int
) -> tuple[tuple[np.ndarray, ...], ...]:
    """Training rows for every (shot count, repeat): min(k, class size) per class, no
    replacement. train_codes: (n,) int64 class codes. Returns draws[i][r] sorted (m,) int64."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(train_codes == c) for c in range(n_classes)]

    def draw(k: int) -> np.ndarray:
        picks = [rng.choice(rows, size=min(k, len(rows)), replace=False) for rows in members]
        return np.sort(np.concatenate(picks))

    return tuple(tuple(draw(k) for _ in range(n_repeats)) for k in shots)


def fewshot_curve(
    train_vectors: Any,
    train_labels: Sequence[Any],
    test_vectors: Any,
    test_labels: Sequence[Any],
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    n_repeats: int = 10,
    seed: int = 0,
    probe_c: float = 1.0,
) -> FewShotCurve:
    """Label-efficiency curve of prototype classification and a linear probe.

    train_vectors: (n_train, d); test_vectors: (n_test, d); labels (n_train,), (n_test,).
    shots: training items per class k; n_repeats: draws per k; probe_c: inverse L2 strength
    of the logistic regression.
    """
    train = l2_normalised(as_vectors(train_vectors, "train_vectors"), "train_vectors")
    test = l2_normalised(as_vectors(test_vectors, "test_vectors"), "test_vectors")
    if train.shape[1] != test.shape[1]:
        raise InputError(
            f"train_vectors has dimension {train.shape[1]} but test_vectors has {test.shape[1]}"
        )
    train_keys = as_keys(train_labels, len(train), "train_labels")
    test_keys = as_keys(test_labels, len(test), "test_labels")
    classes, train_codes = np.unique(train_keys.astype(str), return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"train_labels: need at least 2 classes, found {len(classes)}")
    shot_counts = _check_shots(shots, n_repeats)
    # Test items of a class never seen in training get code -1: always misclassified.
    class_index = {label: code for code, label in enumerate(classes.tolist())}
    test_codes = np.array([class_index.get(str(label), -1) for label in test_keys], dtype=np.int64)

    draws = draw_shots(train_codes, len(classes), shot_counts, n_repeats, seed)
    grid = (len(shot_counts), n_repeats)
    scores = {method: {score: np.full(grid, np.nan) for score in SCORES} for method in METHODS}
    for i, shot_draws in enumerate(draws):
        for r, rows in enumerate(shot_draws):
            drawn, drawn_codes = train[rows], train_codes[rows]
            class_scores = {
                "prototype": _prototype_scores(drawn, drawn_codes, test, len(classes)),
                "linear_probe": _probe_scores(drawn, drawn_codes, test, len(classes), probe_c),
            }
            for method, method_scores in class_scores.items():
                predicted = method_scores.argmax(axis=1)
                scores[method]["balanced_accuracy"][i, r] = balanced_accuracy(test_codes, predicted)
                scores[method]["macro_auroc"][i, r] = macro_auroc(test_codes, method_scores)
    class_sizes = np.bincount(train_codes, minlength=len(classes))
    short_classes = {
        k: {str(classes[c]): int(class_sizes[c]) for c in np.flatnonzero(class_sizes < k)}
        for k in shot_counts
    }
    return FewShotCurve(
        shots=shot_counts,
        classes=tuple(classes.tolist()),
        scores=scores,
        draws=draws,
        short_classes=short_classes,
        notes=tuple(_short_class_notes(short_classes) + _unseen_test_notes(test_keys, test_codes)),
    )


def _check_shots(shots: Sequence[int], n_repeats: int) -> tuple[int, ...]:
    """Positive, sorted, unique shot counts; n_repeats >= 1."""
    values = [shots] if isinstance(shots, (int, np.integer)) else list(shots)
    if not values or not all(_is_positive_int(k) for k in values):
        raise InputError(f"shots: {shots!r} must be positive integers")
    if not _is_positive_int(n_repeats):
        raise InputError(f"n_repeats: {n_repeats!r} is not a positive integer")
    return tuple(sorted({int(k) for k in values}))


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _prototype_scores(
    train: np.ndarray, codes: np.ndarray, test: np.ndarray, n_classes: int
) -> np.ndarray:
    """Cosine similarity of each test row to each class prototype, (n_test, n_classes)."""
    sums = np.zeros((n_classes, train.shape[1]))
    np.add.at(sums, codes, train)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    # A prototype of zero length (opposite embeddings cancelling) points nowhere: score 0.
    prototypes = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    return test @ prototypes.T


def _probe_scores(
    train: np.ndarray, codes: np.ndarray, test: np.ndarray, n_classes: int, probe_c: float
) -> np.ndarray:
    """Logistic-regression class probabilities of each test row, (n_test, n_classes)."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=probe_c, class_weight="balanced", max_iter=1000)
    probe.fit(train, codes)
    probabilities = np.zeros((len(test), n_classes))
    probabilities[:, probe.classes_] = probe.predict_proba(test)
    return probabilities


def balanced_accuracy(true_codes: np.ndarray, predicted_codes: np.ndarray) -> float:
    """Mean over the classes present in `true_codes` (n,) of their recall."""
    recalls = [np.mean(predicted_codes[true_codes == c] == c) for c in np.unique(true_codes)]
    return float(np.mean(recalls))


def macro_auroc(true_codes: np.ndarray, class_scores: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over scored classes with positives and negatives; NaN if none.

    true_codes: (n,) int64 (-1 = class without a score column); class_scores: (n, n_classes).
    """
    from sklearn.metrics import roc_auc_score

    areas = []
    for c in range(class_scores.shape[1]):
        positives = true_codes == c
        if positives.any() and not positives.all():
            areas.append(roc_auc_score(positives, class_scores[:, c]))
    return float(np.mean(areas)) if areas else float("nan")


def _short_class_notes(short_classes: dict[int, dict[str, int]]) -> list[str]:
    """Notes for classes drawn with fewer than k items because they have no more."""
    return [
        f"k={k}: class {label!r} has only {available} training items and uses all of them"
        for k, classes in short_classes.items()
        for label, available in classes.items()
    ]


def _unseen_test_notes(test_keys: np.ndarray, test_codes: np.ndarray) -> list[str]:
    """Notes for test classes absent from training (counted as wrong, not AUROC-scored)."""
    unseen = sorted(set(test_keys[test_codes < 0].astype(str).tolist()))
    return [
        f"test class {label!r} has no training items: its test rows count as errors in balanced "
        "accuracy and it is left out of macro AUROC"
        for label in unseen
    ]
