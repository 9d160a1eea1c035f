"""The generated cohort: file formats, determinism, composition and coverage."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.synthetic.cohort import CohortConfig, generate_cohort, quick_config
from threads_search.synthetic.bags import quantised_gaussian_noise
from threads_search.synthetic.design import draw_patients, largest_remainder_counts
from threads_search.synthetic.molecular import DRIVER_GENES, SHARED_DRIVER

PATIENT_ID = re.compile(r"^SYN-S[1-6]-\d{4}$")
SLIDE_ID = re.compile(r"^SYN-S[1-6]-\d{4}-01Z-00-DX[12]$")
SAMPLE_ID = re.compile(r"^SYN-S[1-6]-\d{4}-01A$")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("cohort"), quick_config(seed=3))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_maf(path: Path) -> tuple[str, list[dict]]:
    with open(path, newline="") as handle:
        first_line = handle.readline().rstrip("\n")
        return first_line, list(csv.DictReader(handle, delimiter="\t"))


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_feature_files_have_trident_layout(cohort):
    slides = read_csv(cohort.slides_csv)
    assert [p.stem for p in cohort.feature_paths] == [row["slide_id"] for row in slides]
    assert sorted(p.name for p in cohort.features_dir.iterdir()) == sorted(
        p.name for p in cohort.feature_paths
    )
    n_patches = 0
    for path in cohort.feature_paths:
        with h5py.File(path, "r") as handle:
            features, coords = handle["features"], handle["coords"]
            n = features.shape[0]
            assert features.shape == (n, 768) and features.dtype == np.float16
            assert coords.shape == (n, 2) and coords.dtype == np.int64
            assert 30 <= n <= 150
            expected = {
                "patch_size": 512,
                "patch_size_level0": 1024,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": path.stem,
            }
            assert {key: coords.attrs[key] for key in expected} == expected
            assert features.attrs["encoder"] == "synthetic_conch_v15"
            xy = coords[:]
            assert np.all(xy % 1024 == 0) and len(np.unique(xy, axis=0)) == n
            assert np.all(xy[:, 0] + 1024 <= coords.attrs["level0_width"])
            assert np.all(xy[:, 1] + 1024 <= coords.attrs["level0_height"])
            # Raster order (y, then x), as a patcher walking the grid writes them.
            assert np.array_equal(np.lexsort((xy[:, 0], xy[:, 1])), np.arange(n))
            assert np.all(np.isfinite(features[:].astype(np.float32)))
            n_patches += n
    assert n_patches == cohort.summary.n_patches


def test_tumour_region_is_small_and_contiguous(cohort):
    low, high = cohort.config.tumour_fraction
    for path in cohort.feature_paths:
        mask = cohort.truth.tumour_masks[path.stem]
        n = len(mask)
        assert max(2, round(low * n)) <= mask.sum() <= max(2, round(high * n))
        with h5py.File(path, "r") as handle:
            grid = handle["coords"][:] // 1024
        tumour = grid[mask]
        # Each tumour cell touches another tumour cell (8-neighbourhood): one region, not dust.
        gaps = np.abs(tumour[:, None, :] - tumour[None, :, :]).max(axis=2)
        np.fill_diagonal(gaps, 99)
        assert np.all(gaps.min(axis=1) <= 2)


def test_metadata_tables(cohort):
    slides = read_csv(cohort.slides_csv)
    samples = read_csv(cohort.samples_csv)
    assert list(slides[0]) == ["slide_id", "patient_id", "site", "cohort", "subtype", "stage", "age", "sex"]
    assert list(samples[0]) == ["sample_id", "patient_id", "site", "cohort", "subtype"]
    assert all(SLIDE_ID.match(r["slide_id"]) and PATIENT_ID.match(r["patient_id"]) for r in slides)
    assert all(SAMPLE_ID.match(r["sample_id"]) for r in samples)
    for row in slides:
        assert row["slide_id"].startswith(row["patient_id"] + "-")
        assert row["site"] == f"site{row['patient_id'][5]}"
        assert row["cohort"] == ("heldout" if row["site"] in ("site5", "site6") else "train")
        assert row["subtype"] in cohort.config.subtypes and row["stage"] in ("I", "II", "III", "IV")
        assert 25 <= int(row["age"]) <= 90
    patients = {r["patient_id"] for r in slides}
    assert len(patients) == cohort.summary.n_patients == 60
    assert len(slides) == cohort.summary.n_slides > len(patients)  # some have two slides
    # The same patient has the same subtype/site on every table.
    by_patient = {r["patient_id"]: (r["site"], r["subtype"]) for r in slides}
    assert all(by_patient[r["patient_id"]] == (r["site"], r["subtype"]) for r in samples)
    unpaired = [r for r in slides if r["patient_id"] not in {s["patient_id"] for s in samples}]
    assert len(unpaired) == cohort.summary.n_unpaired_slides >= 1


def test_expression_is_tpm_over_named_genes(cohort):
    with open(cohort.expression_csv, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    assert header[0] == "sample_id" and len(header) == 1 + 300
    assert {SHARED_DRIVER, "KRAS", "GAPDH", "GENE00001"} <= set(header)
    assert len(set(header)) == len(header)
    tpm = np.array([row[1:] for row in rows], dtype=float)
    assert tpm.shape == (cohort.summary.n_expression_samples, 300)
    assert np.all(tpm >= 0) and np.any(tpm == 0)  # below the detection limit
    np.testing.assert_allclose(tpm.sum(axis=1), 1e6, rtol=1e-4)
    # Heavy-tailed and un-logged: the top gene is orders of magnitude above the median one.
    assert np.all(tpm.max(axis=1) / np.median(tpm, axis=1) > 100)
    sample_ids = {r["sample_id"] for r in read_csv(cohort.samples_csv)}
    assert {row[0] for row in rows} <= sample_ids
    assert len(rows) >= 0.8 * cohort.summary.n_patients


def test_maf_drivers_follow_subtypes(cohort):
    version, records = read_maf(cohort.mutations_maf)
    assert version == "#version 2.4"
    assert {"Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification", "Chromosome",
            "Start_Position", "End_Position", "Reference_Allele", "Tumor_Seq_Allele2"} <= set(records[0])
    assert len(records) == cohort.summary.n_mutations
    samples = {r["sample_id"]: r for r in read_csv(cohort.samples_csv)}
    mutated = {(r["Tumor_Sample_Barcode"], r["Hugo_Symbol"]) for r in records}
    profiled = {r["Tumor_Sample_Barcode"] for r in records}
    assert profiled <= set(samples) and len(profiled) == cohort.summary.n_mutation_samples
    for record in records:
        assert int(record["t_ref_count"]) + int(record["t_alt_count"]) == int(record["t_depth"])
        assert int(record["End_Position"]) >= int(record["Start_Position"])
    subtypes = cohort.config.subtypes
    own_driver, other_drivers = [], []
    for sample in profiled:
        k = subtypes.index(samples[sample]["subtype"])
        own_driver.append((sample, DRIVER_GENES[2 * k]) in mutated)
        other_drivers += [(sample, DRIVER_GENES[2 * j]) in mutated for j in range(len(subtypes)) if j != k]
    # Configured 0.8 for the own first driver; the others only carry passenger mutations.
    assert 0.65 <= np.mean(own_driver) <= 0.95
    assert np.mean(other_drivers) < 0.05


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = generate_cohort(tmp_path / "a", quick_config(seed=11))
    second = generate_cohort(tmp_path / "b", quick_config(seed=11))
    other = generate_cohort(tmp_path / "c", quick_config(seed=12))
    assert file_digests(first.root) == file_digests(second.root)
    assert np.array_equal(first.truth.patient_state, second.truth.patient_state)
    with h5py.File(first.feature_paths[0]) as a, h5py.File(other.feature_paths[0]) as c:
        assert a["features"].shape != c["features"].shape or not np.array_equal(
            a["features"][:], c["features"][:]
        )


def test_changing_genes_does_not_move_slides(tmp_path):
    base = generate_cohort(tmp_path / "a", quick_config(seed=5))
    more_genes = generate_cohort(tmp_path / "b", replace(quick_config(seed=5), n_genes=400))
    assert file_digests(base.features_dir) == file_digests(more_genes.features_dir)


def test_subtype_frequencies_roughly_as_configured():
    config = replace(quick_config(seed=0), n_patients=3000)
    patients = draw_patients(config)
    heldout = patients.site_index >= 4
    train_frequency = np.bincount(patients.subtype_index[~heldout], minlength=6) / (~heldout).sum()
    # Binomial standard error with ~2000 training patients is <= 0.011; allow 3 of them.
    np.testing.assert_allclose(train_frequency, config.subtype_frequencies, atol=0.033)
    heldout_counts = np.bincount(patients.subtype_index[heldout], minlength=6)
    expected = largest_remainder_counts(int(heldout.sum()), np.array(config.subtype_frequencies))
    assert np.array_equal(heldout_counts, expected)


@pytest.mark.parametrize("seed", range(8))
def test_every_subtype_has_three_heldout_patients(seed):
    patients = draw_patients(quick_config(seed=seed))
    heldout = patients.site_index >= 4
    counts = np.bincount(patients.subtype_index[heldout], minlength=6)
    assert counts.min() >= 3 and counts[-1] >= 3  # the last is the rarest (clear_cell, 4%)


def test_largest_remainder_counts_by_hand():
    assert largest_remainder_counts(10, np.array([0.35, 0.25, 0.17, 0.12, 0.07, 0.04])).tolist() == [
        4, 2, 2, 1, 1, 0  # quotas 3.5 2.5 1.7 1.2 0.7 0.4: floors sum to 7; the 3 left go to .7 .7 .5
    ]


def test_quantised_noise_is_standard_normal():
    noise = quantised_gaussian_noise(np.random.default_rng(0), (2000, 64))
    assert noise.dtype == np.float32 and len(np.unique(noise)) == 256
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1.0) < 0.01
    assert abs(np.mean(np.abs(noise) < 1.0) - 0.6827) < 0.01


def test_refuses_to_mix_cohorts_unless_overwrite(tmp_path):
    generate_cohort(tmp_path, quick_config(seed=1))
    stale = tmp_path / "features" / "SYN-S9-9999-01Z-00-DX1.h5"
    stale.write_bytes(b"")
    with pytest.raises(InputError, match="features"):
        generate_cohort(tmp_path, quick_config(seed=2))
    files = generate_cohort(tmp_path, quick_config(seed=2), overwrite=True)
    assert not stale.exists()
    assert sorted(files.features_dir.glob("*.h5")) == sorted(files.feature_paths)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"subtype_frequencies": (0.5, 0.5, 0.1, 0.1, 0.1, 0.1)}, "subtype_frequencies"),
        ({"bag_size": (100, 10)}, "bag_size"),
        ({"n_heldout_sites": 6}, "n_heldout_sites"),
        ({"tumour_fraction": (0.0, 0.2)}, "tumour_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(InputError, match=f"CohortConfig.{field}"):
        replace(quick_config(), **changes)


def test_too_few_patients_for_heldout_floor(tmp_path):
    with pytest.raises(InputError, match="CohortConfig.n_patients"):
        generate_cohort(tmp_path, CohortConfig(n_patients=15, bag_size=(10, 20), n_genes=100))
    assert not (tmp_path / "features").exists()
