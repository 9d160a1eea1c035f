"""Ingestion end to end through the CLI: counts, pairing, idempotence, formats users have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_clam, write_csv, write_trident
from threads_search.atlas.store import open_atlas
from threads_search.cli.app import app

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def info_json(atlas: Path) -> dict:
    result = cli("info", atlas, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def atlas(tmp_path: Path) -> Path:
    path = tmp_path / "atlas"
    assert cli("init", path).exit_code == 0
    return path


def test_trident_features_expression_and_metadata_give_right_counts(atlas, feature_folder, slide_metadata, expression_csv, sample_metadata):
    result = cli("ingest", "slides", atlas, feature_folder, "--metadata", slide_metadata)
    assert result.exit_code == 0, result.output
    assert "6 added" in result.output
    result = cli("ingest", "expression", atlas, expression_csv, "--metadata", sample_metadata)
    assert result.exit_code == 0, result.output
    assert "scale: tpm" in result.output
    summary = info_json(atlas)
    assert summary["items"] == {"slides": 6, "expression": 3, "mutations": 0}
    assert summary["patients"] == 3
    assert summary["pairing"]["slides_with_expression"] == 6
    assert summary["features"]["feature_dim"] == 768
    assert summary["features"]["patch_encoder"] == "conch_v15"
    assert summary["features"]["dtypes"] == ["float16"]
    assert summary["profiles"][0]["genes"] == 40 and summary["profiles"][0]["scale"] == "tpm"
    assert summary["metadata"]["subtype"]["counts"]["basal"] == {"slides": 2}
    assert summary["metadata"]["site"]["counts"]["siteA"] == {"slides": 4}
    text = cli("info", atlas).output
    assert "6 slides, 3 expression profiles" in text and "subtype: basal=2 slides" in text


def test_reingest_is_idempotent_and_a_changed_file_needs_replace(atlas, feature_folder, rng):
    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0
    again = cli("ingest", "slides", atlas, feature_folder)
    assert again.exit_code == 0 and "0 added, 0 replaced, 6 unchanged" in again.output
    with open_atlas(atlas) as opened:
        vid_before = opened.sql("SELECT vid FROM items WHERE item_id = 'P0-S0'").fetchone()[0]
    other = feature_folder.parent / "other"
    other.mkdir()
    write_trident(other / "P0-S0.h5", rng.normal(size=(10, 768)).astype(np.float16))
    refused = cli("ingest", "slides", atlas, other / "P0-S0.h5")
    assert refused.exit_code == 2 and "--replace" in refused.output
    replaced = cli("ingest", "slides", atlas, other / "P0-S0.h5", "--replace")
    assert replaced.exit_code == 0 and "1 replaced" in replaced.output
    with open_atlas(atlas) as opened:
        n_patches, vid_after = opened.sql("SELECT n_patches, vid FROM slides JOIN items ON item_id = slide_id WHERE slide_id = 'P0-S0'").fetchone()
    assert n_patches == 10 and vid_after != vid_before  # a new vector id: old embeddings cannot be mistaken for it


def test_clam_and_pt_files_and_globs(atlas, tmp_path, rng):
    import torch

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_clam(folder / "clam_a.h5", rng.normal(size=(12, 64)).astype(np.float32))
    torch.save(torch.from_numpy(rng.normal(size=(7, 64)).astype(np.float32)), folder / "tensor_b.pt")
    torch.save({"features": torch.zeros(5, 64)}, folder / "tensor_c.pt")
    result = cli("ingest", "slides", atlas, str(folder / "*.h5"), folder / "tensor_b.pt", folder / "tensor_c.pt")
    assert result.exit_code == 0, result.output
    with open_atlas(atlas) as opened:
        rows = dict(opened.sql("SELECT slide_id, file_format || ':' || n_patches FROM slides").fetchall())
    assert rows == {"clam_a": "clam:12", "tensor_b": "pt:7", "tensor_c": "pt:5"}


def test_copy_keeps_working_after_the_source_is_gone(atlas, feature_folder):
    assert cli("ingest", "slides", atlas, feature_folder / "P1-S1.h5", "--copy").exit_code == 0
    (feature_folder / "P1-S1.h5").unlink()
    with open_atlas(atlas) as opened:
        path, copied = opened.sql("SELECT path, copied FROM slides").fetchone()
    assert copied and (atlas / path).is_file()


def test_genes_as_rows_and_parquet_and_h5ad_agree(atlas, tmp_path, rng):
    import anndata
    import pandas as pd

    values = rng.integers(0, 500, size=(4, 6)).astype(np.float32)
    samples, genes = [f"S{i}" for i in range(4)], ["TP53", "EGFR", "MYC", "ERBB2", "ESR1", "PGR"]
    write_csv(tmp_path / "xena.tsv", ["gene"] + samples, [[g] + list(values[:, j]) for j, g in enumerate(genes)], delimiter="\t")
    frame = pd.DataFrame(values, index=samples, columns=genes).rename_axis("sample_id").reset_index()
    frame.to_parquet(tmp_path / "expr.parquet")
    anndata.AnnData(X=values, obs=pd.DataFrame(index=samples), var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "expr.h5ad")
    from threads_search.readers.profiles import read_expression

    as_rows = read_expression(tmp_path / "xena.tsv", genes_as_rows=True)
    parquet = read_expression(tmp_path / "expr.parquet")
    h5ad = read_expression(tmp_path / "expr.h5ad")
    for profile in (as_rows, parquet, h5ad):
        assert profile.sample_ids == samples and profile.genes == genes
        np.testing.assert_array_equal(profile.values, values)
    result = cli("ingest", "expression", atlas, tmp_path / "expr.h5ad")
    assert result.exit_code == 0 and "scale: counts" in result.output


def test_real_gse7390_breast_cancer_expression(atlas, tmp_path):
    sksurv_datasets = pytest.importorskip("sksurv.datasets")
    features, _ = sksurv_datasets.load_breast_cancer()
    genes = [c for c in features.columns if c not in ("age", "er", "grade", "size")]
    table = features[genes].copy()
    table.insert(0, "sample_id", [f"GSE7390-{i:03d}" for i in range(len(table))])
    table.to_csv(tmp_path / "gse7390.csv", index=False)
    result = cli("ingest", "expression", atlas, tmp_path / "gse7390.csv")
    assert result.exit_code == 0, result.output
    assert "scale: log" in result.output  # microarray values are already log2
    summary = info_json(atlas)
    assert summary["items"]["expression"] == 198
    assert summary["profiles"][0]["genes"] == 76
    from threads_search.atlas.profiles import load_profiles

    with open_atlas(atlas) as opened:
        (stored,) = load_profiles(opened, "expression")
    assert stored.genes == genes and stored.genes[0] == "X200726_at"
    np.testing.assert_allclose(stored.values, features[genes].to_numpy(np.float32))


def test_maf_and_binary_matrix(atlas, tmp_path):
    maf = tmp_path / "cohort.maf"
    maf.write_text("#version 2.4\nHugo_Symbol\tTumor_Sample_Barcode\tVariant_Classification\n"
                   "TP53\tS1\tMissense_Mutation\nPIK3CA\tS1\tSilent\nPIK3CA\tS2\tMissense_Mutation\nKRAS\tS3\tNonsense_Mutation\n")
    result = cli("ingest", "mutations", atlas, maf)
    assert result.exit_code == 0, result.output
    from threads_search.atlas.profiles import load_profiles

    with open_atlas(atlas) as opened:
        (stored,) = load_profiles(opened, "mutations")
    assert stored.sample_ids == ["S1", "S2", "S3"] and stored.genes == ["KRAS", "PIK3CA", "TP53"]
    np.testing.assert_array_equal(stored.values, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    matrix = write_csv(tmp_path / "binary.csv", ["sample_id", "TP53", "KRAS"], [["S9", 1, 0], ["S8", 0, 0]])
    assert cli("ingest", "mutations", atlas, matrix).exit_code == 0


def test_metadata_mismatch_warns_or_refuses_with_strict(atlas, feature_folder, tmp_path):
    metadata = write_csv(tmp_path / "partial.csv", ["slide_id", "patient_id", "site"],
                         [["P0-S0", "P0", "a"], ["ghost", "P9", "b"]])
    strict = cli("ingest", "slides", atlas, feature_folder, "--metadata", metadata, "--strict")
    assert strict.exit_code == 2 and "ghost" in strict.output
    loose = cli("ingest", "slides", atlas, feature_folder, "--metadata", metadata)
    assert loose.exit_code == 0
    assert "1 metadata row(s) have no feature file" in loose.output
    assert "5 feature file(s) have no metadata row" in loose.output


def test_referenced_file_that_changes_or_vanishes_is_named(atlas, feature_folder, rng):
    from threads_search.atlas.slides import load_slide_bag, slide_records
    from threads_search.errors import InputError

    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0
    with open_atlas(atlas) as opened:
        records = {r.slide_id: r for r in slide_records(opened)}
    assert load_slide_bag(records["P0-S0"]).shape == (records["P0-S0"].n_patches, 768)
    write_trident(feature_folder / "P0-S1.h5", rng.normal(size=(9, 768)).astype(np.float16))
    with pytest.raises(InputError, match="P0-S1.h5: feature file of slide 'P0-S1' changed since ingest"):
        load_slide_bag(records["P0-S1"])
    (feature_folder / "P1-S0.h5").unlink()
    with pytest.raises(InputError, match="P1-S0.h5: feature file of slide 'P1-S0' has vanished"):
        load_slide_bag(records["P1-S0"])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_check_agrees_with_numpy(dtype):
    from threads_search.readers.patch_features import _all_finite

    base = np.random.default_rng(3).normal(size=(50, 8)).astype(dtype)
    base[4, 2] = np.finfo(dtype).max  # largest finite value is still finite
    base[5, 3] = -np.finfo(dtype).max
    assert _all_finite(base)
    for bad in (np.nan, np.inf, -np.inf):
        broken = base.copy()
        broken[17, 6] = bad
        assert not _all_finite(broken) and not np.isfinite(broken).all()
