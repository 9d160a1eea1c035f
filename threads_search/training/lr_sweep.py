"""`learning_rate = "auto"`: a short seeded sweep on the patient-level validation split picks it.

Each candidate trains `min(epochs, SWEEP_EPOCHS)` epochs from the same seed (same split, same
initial weights, the schedule compressed to the short run); the rate with the best validation
mAP@k over those epochs wins, ties to the lower rate. A candidate whose loss diverges scores
None. Costs about len(CANDIDATES) * SWEEP_EPOCHS extra epochs.
"""

from __future__ import annotations

from dataclasses import replace

from threads_search.errors import TrainingError

CANDIDATES = (5e-4, 2e-3, 5e-3)  # around the demo's 2e-3; 2e-4 (the former default) trailed far behind there
SWEEP_EPOCHS = 3


def choose_learning_rate(dataset, config) -> tuple[float, dict[float, float | None]]:
    """(chosen rate, {candidate: best validation mAP@k or None}); TrainingError without a validation split."""
    from threads_search.training.trainer import TrainingDiverged, _train

    short = min(config.epochs, SWEEP_EPOCHS)
    scores: dict[float, float | None] = {}
    for rate in CANDIDATES:
        trial = replace(config, learning_rate=rate, epochs=short, patience=short)
        try:
            history = _train(dataset, trial, None, None).history
        except TrainingDiverged:
            scores[rate] = None
            continue
        scores[rate] = max((r.val_map for r in history if r.val_map is not None), default=None)
    scored = {rate: score for rate, score in scores.items() if score is not None}
    if not scored:
        raise TrainingError("learning_rate 'auto' needs a validation split (val_fraction > 0 and enough paired "
                            "patients for 2 validation and 2 training patients); give --learning-rate instead")
    return max(scored, key=lambda rate: (scored[rate], -rate)), scores
