"""The lines a training run ends with, shared by `train`, `train --slide-encoder` and the demo."""

from __future__ import annotations

from collections.abc import Sequence


def validation_task(modalities: Sequence[str], label: str | None) -> str:
    """What the validation figure measures, e.g. 'expression->slide, relevant = same subtype'."""
    queries = " and ".join(f"{m}->slide" for m in modalities) or "profile->slide"
    mean = "mean of " if len(modalities) > 1 else ""
    return f"{mean}{queries}, relevant = same {label or 'patient'}"


def validation_line(initial_map: float | None, history: Sequence, modalities: Sequence[str], label: str | None,
                    k: int, kept_epoch: int | None = None) -> str | None:
    """'validation mAP@5 (expression->slide, relevant = same subtype): 0.010 before training -> 0.102',
    the kept epoch's figure on the right (default: the best epoch's); None without a validation split."""
    if kept_epoch:
        kept = history[kept_epoch - 1].val_map
    else:
        kept = max((r.val_map for r in history if r.val_map is not None), default=None)
    if initial_map is None or kept is None:
        return None
    return f"validation mAP@{k} ({validation_task(modalities, label)}): {initial_map:.3f} before training -> {kept:.3f}"


def kept_epoch_text(training) -> str:
    """'best epoch 9 of 13', or for schedule 'wsd' 'kept epoch 15 of 15 (decayed from epoch 9, the best at the peak rate)'."""
    if training.decayed_from_epoch is None:
        return f"best epoch {training.best_epoch} of {len(training.history)}"
    return (f"kept epoch {training.best_epoch} of {len(training.history)} "
            f"(decayed from epoch {training.decayed_from_epoch}, the best at the peak rate)")


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


def schedule_line(training, k: int) -> str | None:
    """"schedule 'auto': kept the 8-epoch run (validation mAP@5 0.096; up to 24 epochs: 0.099, a gain of
    0.003 +- 0.012, within one standard error)"; None when the schedule was given."""
    choice = training.schedule_choice
    if not choice:
        return None
    if "long" not in choice:
        return f"schedule 'auto': {choice['chosen']} ({choice['reason']}, nothing to compare)"
    long, short = choice["long"], choice["short"]
    kept, other = (long, short) if choice["kept"] == "long" else (short, long)
    verdict = "more than" if kept is long else "within"
    return (f"schedule 'auto': kept cosine over {kept['epochs']} epochs (validation mAP@{k} {kept['val_map']:.3f}; "
            f"{other['epochs']} epochs: {other['val_map']:.3f}; the longer gains {choice['gain']:+.3f}, "
            f"{verdict} one standard error {choice['standard_error']:.3f})")
