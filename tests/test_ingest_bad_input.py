"""Every bad input of the atlas issue: a one-line error naming the file/row/column, exit code 2,
and an atlas left exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_csv, write_trident
from threads_search.cli.app import app

runner = CliRunner()


def snapshot(atlas: Path) -> dict:
    """Every table's rows plus every file's bytes: equality means nothing changed."""
    import duckdb

    connection = duckdb.connect(str(atlas / "atlas.duckdb"), read_only=True)
    tables = [r[0] for r in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    state = {t: sorted(map(str, connection.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    state["columns"] = connection.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'items'").fetchall()
    connection.close()
    state["files"] = {str(p.relative_to(atlas)): hashlib.sha1(p.read_bytes()).hexdigest()
                      for p in sorted(atlas.rglob("*")) if p.is_file() and p.name != "atlas.duckdb"}
    return state


@pytest.fixture
def populated(tmp_path, feature_folder, slide_metadata, expression_csv, sample_metadata) -> Path:
    atlas = tmp_path / "atlas"
    for args in (("init", atlas), ("ingest", "slides", atlas, feature_folder, "--metadata", slide_metadata),
                 ("ingest", "expression", atlas, expression_csv, "--metadata", sample_metadata)):
        assert runner.invoke(app, [str(a) for a in args]).exit_code == 0
    return atlas


def refuse(atlas: Path, args: list, *expected: str) -> None:
    before = snapshot(atlas)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert snapshot(atlas) == before


def good_file(folder: Path, name: str, n: int = 10, dim: int = 768) -> Path:
    return write_trident(folder / name, np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32))


def test_truncated_hdf5(populated, tmp_path):
    path = good_file(tmp_path, "trunc.h5", n=400)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refuse(populated, ["ingest", "slides", populated, path], "trunc.h5")


def test_corrupt_hdf5(populated, tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    refuse(populated, ["ingest", "slides", populated, path], "noise.h5", "HDF5")


def test_h5_without_features(populated, tmp_path):
    import h5py

    path = tmp_path / "nofeat.h5"
    with h5py.File(path, "w") as handle:
        handle["coords"] = np.zeros((3, 2), np.int64)
    refuse(populated, ["ingest", "slides", populated, path], "nofeat.h5", "no dataset 'features'")


def test_wrong_feature_dimension(populated, tmp_path):
    refuse(populated, ["ingest", "slides", populated, good_file(tmp_path, "uni.h5", dim=1024)], "uni.h5", "1024", "768")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features(populated, tmp_path, bad):
    features = np.ones((20, 768), np.float32)
    features[13, 5] = bad
    refuse(populated, ["ingest", "slides", populated, write_trident(tmp_path / "nan.h5", features)], "nan.h5", "row 13")


def test_empty_bag(populated, tmp_path):
    refuse(populated, ["ingest", "slides", populated, write_trident(tmp_path / "empty.h5", np.zeros((0, 768), np.float32))],
           "empty.h5", "0 patches")


def test_duplicate_slide_ids_in_one_call(populated, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        good_file(tmp_path / folder, "same.h5")
    refuse(populated, ["ingest", "slides", populated, tmp_path / "a", tmp_path / "b"], "duplicate slide id 'same'")


def test_strict_metadata_mismatch(populated, tmp_path):
    good_file(tmp_path, "new.h5")
    metadata = write_csv(tmp_path / "m.csv", ["slide_id", "patient_id"], [["other", "P7"]])
    refuse(populated, ["ingest", "slides", populated, tmp_path / "new.h5", "--metadata", metadata, "--strict"], "m.csv")


def test_duplicate_ids_in_metadata(populated, tmp_path):
    good_file(tmp_path, "new.h5")
    metadata = write_csv(tmp_path / "m.csv", ["slide_id", "patient_id"], [["new", "P7"], ["new", "P8"]])
    refuse(populated, ["ingest", "slides", populated, tmp_path / "new.h5", "--metadata", metadata], "m.csv", "row 3", "duplicate")


def test_expression_non_numeric_cell(populated, tmp_path):
    path = write_csv(tmp_path / "e.csv", ["sample_id", "TP53", "EGFR"], [["A", 1.5, 2.0], ["B", 3.0, "high"]])
    refuse(populated, ["ingest", "expression", populated, path], "e.csv", "row 3", "column EGFR", "'high'")


def test_expression_negative_on_tpm_scale(populated, tmp_path):
    path = write_csv(tmp_path / "e.csv", ["sample_id", "TP53", "EGFR"], [["A", 1.5, 2.0], ["B", -3.0, 4.0]])
    refuse(populated, ["ingest", "expression", populated, path, "--scale", "tpm"], "e.csv", "sample B", "gene TP53", "negative")


def test_expression_duplicate_gene(populated, tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("sample_id,TP53,TP53\nA,1,2\n")
    refuse(populated, ["ingest", "expression", populated, path], "e.csv", "duplicate gene name 'TP53'")


def test_expression_empty_file(populated, tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("")
    refuse(populated, ["ingest", "expression", populated, path], "e.csv", "empty")


def test_maf_missing_required_columns(populated, tmp_path):
    path = tmp_path / "bad.maf"
    path.write_text("Hugo_Symbol\tSample\nTP53\tA\n")
    refuse(populated, ["ingest", "mutations", populated, path], "bad.maf", "Tumor_Sample_Barcode", "Variant_Classification")


def test_binary_matrix_with_other_values(populated, tmp_path):
    path = write_csv(tmp_path / "m.csv", ["sample_id", "TP53"], [["A", 1], ["B", 2]])
    refuse(populated, ["ingest", "mutations", populated, path], "m.csv", "row 3", "TP53", "not 0 or 1")


def test_path_that_does_not_exist(populated, tmp_path):
    refuse(populated, ["ingest", "slides", populated, tmp_path / "missing.h5"], "missing.h5", "no such file")
    refuse(populated, ["ingest", "expression", populated, tmp_path / "missing.csv"], "missing.csv", "no such file")


def test_folder_that_is_not_an_atlas(tmp_path, feature_folder):
    (tmp_path / "plain").mkdir()
    result = runner.invoke(app, ["ingest", "slides", str(tmp_path / "plain"), str(feature_folder)])
    assert result.exit_code == 2 and "not an atlas" in result.output
    assert list((tmp_path / "plain").iterdir()) == []
    result = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such atlas folder" in result.output


def test_init_refuses_an_existing_atlas(populated):
    refuse(populated, ["init", populated], "already exists")
