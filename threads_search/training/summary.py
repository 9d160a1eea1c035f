"""The lines a training run ends with, shared by `train`, `train --slide-encoder` and the demo."""

from __future__ import annotations

from collections.abc import Sequence


def validation_task(modalities: Sequence[str], label: str | None) -> str:
    """What the validation figure measures, e.g. 'expression->slide, relevant = same subtype'."""
    queries = " and ".join(f"{m}->slide" for m in modalities) or "profile->slide"
    mean = "mean of " if len(modalities) > 1 else ""
    return f"{mean}{queries}, relevant = same {label or 'patient'}"


def validation_line(initial_map: float | None, history: Sequence, modalities: Sequence[str], label: str | None,
                    k: int) -> str | None:
    """'validation mAP@5 (expression->slide, relevant = same subtype): 0.010 before training -> 0.102',
    the best epoch's figure on the right; None without a validation split."""
    best = max((r.val_map for r in history if r.val_map is not None), default=None)
    if initial_map is None or best is None:
        return None
    return f"validation mAP@{k} ({validation_task(modalities, label)}): {initial_map:.3f} before training -> {best:.3f}"


def learning_rate_line(training, k: int) -> str | None:
    """"learning rate 'auto': 0.002 chosen by validation mAP@5 after 3 epochs each (0.0005: 0.081, ...)";
    None when the rate was given."""
    from threads_search.training.lr_sweep import SWEEP_EPOCHS

    if training.chosen_learning_rate is None:
        return None
    scores = ", ".join(f"{rate:g}: {'diverged' if score is None else f'{score:.3f}'}"
                       for rate, score in training.learning_rate_sweep.items())
    return (f"learning rate 'auto': {training.chosen_learning_rate:g} chosen by validation mAP@{k} after up to "
            f"{SWEEP_EPOCHS} epochs each ({scores})")
