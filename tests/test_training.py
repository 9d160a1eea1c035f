"""Contrastive trainer on a small generated paired cohort, and its building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import threads_search.training.trainer as training
from threads_search.errors import DeviceError, InputError, TrainingError
from threads_search.training.paired_data import (
    PairedDataset,
    PairedProfiles,
    SlideRecord,
    pack_bags,
    sample_bag,
    split_patients,
)
from threads_search.training.trainer import (
    TrainingConfig,
    TrainingDiverged,
    clip_loss,
    plan_batches,
    retrieval_at_k,
    train_model,
)

torch.set_num_threads(1)
TINY_MODEL = {"hidden_dim": 32, "attn_dim": 16, "profile_hidden_dim": 32, "out_dim": 32}


def paired_cohort(n_patients: int = 60, n_classes: int = 3, dim: int = 32, n_genes: int = 40, seed: int = 0,
                  with_mutations: bool = False) -> PairedDataset:
    """Bags where ~15% of patches carry a class signature; expression counts (and the
    mutated driver gene) driven by the same class."""
    rng = np.random.default_rng(seed)
    class_patch = rng.normal(size=(n_classes, dim)) * 1.5
    class_genes = rng.normal(size=(n_classes, n_genes))
    labels = np.arange(n_patients) % n_classes
    patients = [f"P{p:03d}" for p in range(n_patients)]
    slides, expression, mutations = [], [], []
    for patient, label in zip(patients, labels):
        n_patches = int(rng.integers(40, 160))
        patches = rng.normal(size=(n_patches, dim)).astype(np.float32)
        patches[: max(1, n_patches // 7)] += class_patch[label]
        slides.append(SlideRecord(f"S{patient}", patient, patches))
        expression.append(rng.poisson(np.exp(2.0 + class_genes[label] + 0.5 * rng.normal(size=n_genes))))
        driver = (rng.random(10) < 0.1).astype(float)
        driver[label] = 1.0
        mutations.append(driver)
    return PairedDataset(
        slides,
        PairedProfiles(patients, np.array(expression, dtype=float), [f"G{i}" for i in range(n_genes)], "counts"),
        PairedProfiles(patients, np.array(mutations), [f"M{i}" for i in range(10)]) if with_mutations else None,
        {p: str(c) for p, c in zip(patients, labels)},
    )


def config(**overrides) -> TrainingConfig:
    base = dict(recipe="threads-abmil", model=TINY_MODEL, epochs=12, batch_size=16, learning_rate=1e-3,
                val_fraction=0.3, patience=100, seed=0, device="cpu", schedule="cosine")
    return TrainingConfig(**{**base, **overrides})


def test_clip_loss_matches_a_hand_computation():
    slides = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    profiles = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    logits = 10 * np.array([[0.6, 0.0], [0.8, 1.0]])
    rows = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(2)])
    columns = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(2)])
    assert clip_loss(slides, profiles, torch.tensor(10.0)).item() == pytest.approx((rows + columns) / 2, rel=1e-6)


def test_retrieval_at_k_matches_a_hand_computation():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    relevant = np.array([[True, False, True, False], [False, False, False, False]])
    # Query 0, k=3: ranks 1 and 3 relevant -> (1/1 + 2/3) / 3; query 1 has no hit.
    map_at_3, acc_at_3 = retrieval_at_k(scores, relevant, 3)
    assert map_at_3 == pytest.approx(((1 + 2 / 3) / 3) / 2)
    assert acc_at_3 == 0.5


def test_training_lowers_the_loss_and_raises_held_out_retrieval():
    steps, epochs = [], []
    result = train_model(paired_cohort(), config(), on_step=steps.append, on_epoch=epochs.append)
    losses = [record.train_loss for record in result.history]
    assert len(result.history) == 12 and epochs == result.history
    assert len(steps) == 12 * 3 and steps[0].steps_per_epoch == 3  # 42 train patients / 16 -> 3 batches
    assert np.mean(losses[-3:]) < losses[0] - 1.0
    best = max(record.val_map for record in result.history)
    assert result.initial_val_map < 0.3 and best > 0.7  # chance for 3 classes is ~0.33 * precision
    assert result.history[result.best_epoch - 1].val_map == best
    assert set(result.train_patients).isdisjoint(result.val_patients) and len(result.val_patients) == 18
    assert not result.model.training and result.model.logit_scale.device.type == "cpu"


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    cohort = paired_cohort(n_patients=24)
    quick = config(epochs=2, batch_size=8)
    first, second = train_model(cohort, quick), train_model(cohort, quick)
    other = train_model(cohort, config(epochs=2, batch_size=8, seed=1))
    state, again, different = (r.model.state_dict() for r in (first, second, other))
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert not all(torch.equal(state[name], different[name]) for name in state)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]


def test_both_profile_modalities_are_trained_and_normalised_on_training_patients_only():
    cohort = paired_cohort(n_patients=30, with_mutations=True)
    result = train_model(cohort, config(epochs=2, n_top_genes=25))
    model = result.model
    assert model.modalities == ("slides", "expression", "mutations")
    train_rows = [i for i, p in enumerate(cohort.expression.patient_ids) if p in set(result.train_patients)]
    logged = np.log1p(cohort.expression.matrix[train_rows])
    kept = [int(g[1:]) for g in model.expression_normaliser.genes]
    assert len(kept) == 25
    np.testing.assert_allclose(model.expression_normaliser.mean, logged[:, kept].mean(axis=0))
    embeddings, report = model.encode_mutations(cohort.mutations.matrix[:3], cohort.mutations.genes)
    assert embeddings.shape == (3, 32) and report.n_missing == 0


def test_retrieval_without_labels_counts_the_patients_own_slides():
    cohort = paired_cohort(n_patients=20)
    unlabelled = PairedDataset(cohort.slides, cohort.expression)
    result = train_model(unlabelled, config(epochs=1, val_fraction=0.25))
    assert 0.0 <= result.history[0].val_map <= 1 / 5  # one relevant slide per query: at most P@1 / k


def test_early_stopping_keeps_the_best_epoch_when_validation_stalls():
    # A learning rate this small leaves float32 weights unchanged: no epoch beats the start.
    result = train_model(paired_cohort(n_patients=30), config(epochs=10, patience=2, learning_rate=1e-12))
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 0
    assert all(record.val_map == result.initial_val_map for record in result.history)


def test_wsd_holds_the_peak_rate_then_decays_from_the_best_epoch_to_zero():
    rates = []
    result = train_model(paired_cohort(n_patients=30), config(epochs=6, patience=2, schedule="wsd", decay_epochs=3,
                                                              warmup_fraction=0.0), on_epoch=rates.append)
    stable = result.history[:-3]
    assert all(math.isclose(r.learning_rate, 1e-3) for r in stable)  # no cosine in the stable phase
    assert 1 <= result.decayed_from_epoch <= len(stable)
    assert result.decayed_from_epoch == max(range(len(stable)), key=lambda i: (stable[i].val_map, -i)) + 1
    decay = [r.learning_rate for r in result.history[-3:]]
    assert decay == sorted(decay, reverse=True) and decay[-1] == 0.0 and decay[0] < 1e-3
    assert result.best_epoch == len(result.history)  # the decayed weights are kept


def test_wsd_decay_epochs_auto_is_a_quarter_of_the_epochs_to_the_best_and_at_least_two():
    result = train_model(paired_cohort(n_patients=30), config(epochs=3, patience=100, schedule="wsd"))
    assert result.decayed_from_epoch is not None and len(result.history) == 3 + 2


def test_paired_gain_is_the_weighted_difference_with_its_standard_error():
    from threads_search.training.schedule_choice import paired_gain

    weights = np.array([0.25, 0.25, 0.5])  # two modalities: 2 queries of one, 1 of the other
    long_ap, short_ap = np.array([0.5, 0.3, 0.9]), np.array([0.1, 0.3, 0.6])
    gain, error = paired_gain((long_ap, weights), (short_ap, weights))
    d = long_ap - short_ap  # 0.4, 0.0, 0.3
    assert math.isclose(gain, 0.25 * 0.4 + 0.5 * 0.3)
    assert math.isclose(error, math.sqrt(sum(w * w * (x - gain) ** 2 for w, x in zip(weights, d)) * 3 / 2))


def _fake_run(ap, epochs):
    history = [training.EpochRecord(e, 1.0, float(np.mean(ap)), 1.0, 1e-3, 0.07, 0.1) for e in range(1, epochs + 1)]
    return training.TrainingResult(model=None, history=history, best_epoch=epochs, initial_val_map=0.0,
                                   train_patients=[], val_patients=[], device="cpu",
                                   val_queries=(np.asarray(ap, float), np.full(len(ap), 1 / len(ap))))


@pytest.mark.parametrize("long_ap, kept", [([0.30, 0.32, 0.28, 0.31], "long"),   # gains 0.2, every query
                                           ([0.90, 0.10, 0.05, 0.09], "short")])  # one query: within one SE
def test_schedule_auto_keeps_the_long_run_only_beyond_one_standard_error(long_ap, kept):
    from threads_search.training.schedule_choice import SHORT_EPOCHS, choose_schedule

    short_ap = [0.10, 0.12, 0.08, 0.11]
    calls = []

    def fake_train(dataset, cfg, on_step, on_epoch):
        calls.append((cfg.schedule, cfg.epochs, on_epoch is not None))
        return _fake_run(long_ap if cfg.epochs == 24 else short_ap, cfg.epochs)

    result = choose_schedule(None, config(epochs=24, schedule="auto"), fake_train, None, print)
    assert calls == [("cosine", 24, True), ("cosine", SHORT_EPOCHS, False)]  # the long run reports progress
    assert result.schedule_choice["kept"] == kept
    assert len(result.history) == (24 if kept == "long" else SHORT_EPOCHS)


def test_schedule_auto_with_at_most_eight_epochs_is_the_cosine_run_bit_for_bit():
    cohort = paired_cohort(n_patients=24)
    auto = train_model(cohort, config(epochs=2, batch_size=8, schedule="auto"))
    cosine = train_model(cohort, config(epochs=2, batch_size=8, schedule="cosine"))
    assert auto.schedule_choice["reason"] == "epochs <= 8"
    state, other = auto.model.state_dict(), cosine.model.state_dict()
    assert all(torch.equal(state[name], other[name]) for name in state)


def test_batches_by_group_never_mix_groups_and_cover_every_patient_once():
    groups = {f"P{i:02d}": f"site{i % 3}" for i in range(70)} | {"Q1": "lonely"}
    order = [*groups, "N1", "N2"]  # N1, N2: no group
    batches = plan_batches(order, 16, groups)
    seen = [p for batch in batches for p in batch]
    assert sorted(seen) == sorted(order) and len(seen) == len(set(seen))
    grouped = [b for b in batches if not set(b) & {"Q1", "N1", "N2"}]
    assert all(len({groups[p] for p in b}) == 1 for b in grouped)
    assert sorted(len(b) for b in grouped) == [11, 11, 12, 12, 12, 12]  # 23-24 per site in two equal batches
    assert plan_batches(order[:5], 2) == [order[0:2], order[2:4]]  # without groups: consecutive, a single dropped


def test_batch_by_trains_within_site_batches():
    cohort = paired_cohort(n_patients=40)
    sites = {p: f"site{i % 2}" for i, p in enumerate(cohort.expression.patient_ids)}
    grouped = PairedDataset(cohort.slides, cohort.expression, labels=cohort.labels, groups=sites)
    seen = []
    original = training._ContrastiveRun.step
    try:
        training._ContrastiveRun.step = lambda self, patients: (seen.append(list(patients)), original(self, patients))[1]
        train_model(grouped, config(epochs=2, batch_by="site"))
    finally:
        training._ContrastiveRun.step = original
    assert seen and all(len({sites[p] for p in batch}) == 1 for batch in seen)


def test_nan_loss_stops_with_the_last_good_state(monkeypatch):
    calls = {"n": 0}
    real_clip_loss = training.clip_loss

    def failing_clip_loss(*args):
        calls["n"] += 1
        loss = real_clip_loss(*args)
        return loss * math.nan if calls["n"] > 4 else loss  # epoch 1 has 3 steps: fail in epoch 2

    monkeypatch.setattr(training, "clip_loss", failing_clip_loss)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 2") as raised:
        train_model(paired_cohort(), config(epochs=3))
    result = raised.value.result
    assert isinstance(raised.value, TrainingError)
    assert result.best_epoch == 1 and len(result.history) == 1
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values())


def test_refusals():
    cohort = paired_cohort(n_patients=6)
    lonely = PairedDataset(cohort.slides[:1], cohort.expression)
    with pytest.raises(TrainingError, match="at least 2 patients"):
        train_model(lonely, config())
    with pytest.raises(TrainingError, match="found 0"):
        train_model(PairedDataset(cohort.slides, None), config())
    with pytest.raises(InputError, match=r"batch_size \(--patients-per-step\) must be in \[2, "):
        train_model(cohort, config(batch_size=1))
    with pytest.raises(InputError, match="not trainable"):
        train_model(cohort, config(recipe="meanpool"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            train_model(cohort, config(device="cuda"))


def test_sample_bag_draws_without_replacement_from_every_kind_of_handle():
    patches = np.arange(50, dtype=np.float32).reshape(25, 2)
    rng = np.random.default_rng(0)
    drawn = sample_bag(SlideRecord("s", "p", patches), 10, rng)
    assert drawn.shape == (10, 2) and len(set(drawn[:, 0])) == 10 and set(drawn[:, 0]) <= set(patches[:, 0])
    assert sample_bag(SlideRecord("s", "p", lambda: patches), 100, rng).shape == (25, 2)

    class Handle:
        def sample(self, n, rng):
            return patches[:n]

    np.testing.assert_array_equal(sample_bag(SlideRecord("s", "p", Handle()), 3, rng), patches[:3])
    with pytest.raises(InputError, match="slide 'bad'"):
        sample_bag(SlideRecord("bad", "p", np.full((3, 2), np.inf)), 2, rng)


def test_pack_bags_and_patient_split():
    bags = [np.ones((2, 3), np.float32), np.zeros((4, 3), np.float32)]
    buffer = np.full((10, 3), 7, np.float32)
    patches, sizes = pack_bags(bags, ["a", "b"], 3, out=buffer)
    assert patches.shape == (6, 3) and np.shares_memory(patches, buffer)
    np.testing.assert_array_equal(sizes, [2, 4])
    np.testing.assert_array_equal(patches[:, 0], [1, 1, 0, 0, 0, 0])
    with pytest.raises(InputError, match="slide 'b'"):
        pack_bags([bags[0], np.zeros((1, 5), np.float32)], ["a", "b"], 3)
    patients = [f"P{i}" for i in range(10)]
    train, val = split_patients(patients, 0.3, seed=4)
    assert (train, val) == split_patients(patients, 0.3, seed=4) and len(val) == 3
    assert sorted(train + val) == patients
    assert split_patients(patients[:3], 0.3, seed=0) == (patients[:3], [])  # too few for validation


def test_learning_rate_auto_picks_the_best_candidate_and_then_trains_as_if_it_were_given():
    from threads_search.training.lr_sweep import CANDIDATES, SWEEP_EPOCHS
    from threads_search.training.summary import learning_rate_line

    cohort = paired_cohort()
    auto = train_model(cohort, config(epochs=4, learning_rate=None))
    assert list(auto.learning_rate_sweep) == list(CANDIDATES)
    best = max(auto.learning_rate_sweep, key=lambda rate: (auto.learning_rate_sweep[rate], -rate))
    assert auto.chosen_learning_rate == best
    # each candidate's score is what a short run with that rate gives
    short = train_model(cohort, config(epochs=SWEEP_EPOCHS, patience=SWEEP_EPOCHS, learning_rate=CANDIDATES[0]))
    assert auto.learning_rate_sweep[CANDIDATES[0]] == max(r.val_map for r in short.history)
    given = train_model(cohort, config(epochs=4, learning_rate=best))
    for name, tensor in given.model.state_dict().items():
        assert torch.equal(tensor, auto.model.state_dict()[name]), name
    line = learning_rate_line(auto, 5)
    assert line.startswith(f"learning rate 'auto': {best:g} chosen by validation mAP@5 after up to {SWEEP_EPOCHS} epochs")
    assert learning_rate_line(given, 5) is None


def test_learning_rate_auto_without_a_validation_split_is_refused():
    with pytest.raises(TrainingError, match="learning_rate 'auto' needs a validation split"):
        train_model(paired_cohort(), config(epochs=2, learning_rate=None, val_fraction=0.0))
