"""AnnData `.h5ad` expression input, written here with h5py in anndata's on-disk layout (no
anndata package): dense and CSR matrices, `--layer`, obs columns as sample metadata, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_csv
from threads_search.atlas.profiles import load_profiles
from threads_search.atlas.store import open_atlas
from threads_search.cli.app import app
from threads_search.errors import InputError
from threads_search.readers import anndata_h5ad
from threads_search.readers.profiles import read_expression

runner = CliRunner()
SAMPLES = [f"S{i}" for i in range(6)]
GENES = ["TP53", "EGFR", "MYC", "ERBB2", "ESR1", "PGR", "KRT5", "VIM"]
SUBTYPE_CATEGORIES = ["Basal", "LumA", "LumB"]
SUBTYPE_CODES = [1, 0, 1, 2, -1, 1]  # S4's subtype is missing
OBS = {
    "subtype": (SUBTYPE_CATEGORIES, SUBTYPE_CODES),
    "site": ["site1", "site2", "site1", "site2", "site1", "site3"],
    "age": np.array([51.0, 62.5, 47.0, 70.0, 58.0, 66.0]),
    "patient_id": [f"P{i // 2}" for i in range(6)],  # two samples per patient
}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _encode(node, encoding: str, version: str = "0.2.0") -> None:
    node.attrs["encoding-type"] = encoding
    node.attrs["encoding-version"] = version


def _string_array(group, name: str, values) -> None:
    dataset = group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
    _encode(dataset, "string-array")


def _dataframe(group, index: list[str], columns: dict) -> None:
    """An anndata dataframe: `_index` strings, numeric / string columns, (categories, codes) categoricals."""
    _encode(group, "dataframe")
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = np.array(list(columns), dtype=object) if columns else np.array([], dtype="S1")
    _string_array(group, "_index", index)
    for name, column in columns.items():
        if isinstance(column, tuple):
            categories, codes = column
            categorical = group.create_group(name)
            _encode(categorical, "categorical")
            categorical.attrs["ordered"] = False
            categorical.create_dataset("codes", data=np.array(codes, dtype=np.int8))
            _string_array(categorical, "categories", categories)
        elif isinstance(column, list):
            _string_array(group, name, column)
        else:
            _encode(group.create_dataset(name, data=column), "array")


def _matrix(handle_or_group, name: str, values: np.ndarray, sparse: bool) -> None:
    if not sparse:
        _encode(handle_or_group.create_dataset(name, data=values), "array")
        return
    rows, columns = np.nonzero(values)
    group = handle_or_group.create_group(name)
    _encode(group, "csr_matrix", "0.1.0")
    group.attrs["shape"] = np.array(values.shape, dtype=np.int64)
    group.create_dataset("data", data=values[rows, columns])
    group.create_dataset("indices", data=columns.astype(np.int32))
    group.create_dataset("indptr", data=np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=values.shape[0]))]))


def write_h5ad(path: Path, x: np.ndarray | None, layers: dict | None = None, obs: dict | None = None,
               sparse: bool = False, samples=SAMPLES, genes=GENES) -> Path:
    """An .h5ad as anndata 0.8+ writes it: root attrs, obs/var dataframes, X (or none), layers, uns."""
    with h5py.File(path, "w") as handle:
        _encode(handle, "anndata", "0.1.0")
        _dataframe(handle.create_group("obs"), samples, obs or {})
        _dataframe(handle.create_group("var"), genes, {})
        if x is not None:
            _matrix(handle, "X", x, sparse)
        layer_group = handle.create_group("layers")
        _encode(layer_group, "dict", "0.1.0")
        for name, values in (layers or {}).items():
            _matrix(layer_group, name, values, sparse)
        _encode(handle.create_group("uns"), "dict", "0.1.0")
    return path


@pytest.fixture
def counts(rng) -> np.ndarray:
    """(6, 8) float32 raw counts with zeros, as sparse count matrices have."""
    values = rng.integers(0, 900, size=(len(SAMPLES), len(GENES))).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = 0
    return values


@pytest.fixture
def atlas(tmp_path: Path) -> Path:
    path = tmp_path / "atlas"
    assert cli("init", path).exit_code == 0
    return path


def stored_expression(atlas: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open_atlas(atlas, read_only=True) as opened:
        (profile,) = load_profiles(opened, "expression")
    return profile.sample_ids, profile.genes, profile.values


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --- the matrix: dense, CSR, layers --------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_x_is_ingested_exactly_as_written(atlas, tmp_path, counts, sparse):
    path = write_h5ad(tmp_path / "expr.h5ad", counts, sparse=sparse)
    result = cli("ingest", "expression", atlas, path)
    assert result.exit_code == 0, result.output
    assert "6 added" in result.output and "scale: counts" in result.output
    samples, genes, values = stored_expression(atlas)
    assert samples == SAMPLES and genes == GENES
    np.testing.assert_array_equal(values, counts)


def test_csr_reads_back_as_its_dense_matrix_with_zeros_in_place(tmp_path, counts):
    dense = read_expression(write_h5ad(tmp_path / "dense.h5ad", counts))
    csr = read_expression(write_h5ad(tmp_path / "csr.h5ad", counts, sparse=True))
    assert csr.values.dtype == np.float32 and csr.values.shape == (6, 8)
    np.testing.assert_array_equal(csr.values, dense.values)
    assert (csr.values == 0).sum() == (counts == 0).sum() > 0


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_layer_reads_layers_name_instead_of_x(atlas, tmp_path, counts, sparse):
    log_values = np.log1p(counts)
    path = write_h5ad(tmp_path / "expr.h5ad", log_values, layers={"counts": counts}, sparse=sparse)
    np.testing.assert_allclose(read_expression(path).values, log_values, rtol=1e-6)
    result = cli("ingest", "expression", atlas, path, "--layer", "counts")
    assert result.exit_code == 0, result.output
    assert "scale: counts" in result.output  # the layer's integers, not X's log values
    np.testing.assert_array_equal(stored_expression(atlas)[2], counts)


def test_missing_layer_is_one_line_naming_the_file_and_its_layers(atlas, tmp_path, counts):
    path = write_h5ad(tmp_path / "expr.h5ad", counts, layers={"counts": counts, "tpm": counts / 3})
    line = one_line_error(cli("ingest", "expression", atlas, path, "--layer", "spliced"))
    assert str(path) in line and "no layer 'spliced'" in line and "layers: counts, tpm" in line
    with open_atlas(atlas, read_only=True) as opened:
        assert load_profiles(opened, "expression") == []


def test_file_without_x_names_its_layers_and_reads_with_layer(atlas, tmp_path, counts):
    path = write_h5ad(tmp_path / "layers_only.h5ad", None, layers={"counts": counts})
    line = one_line_error(cli("ingest", "expression", atlas, path))
    assert str(path) in line and "no X matrix (layers: counts); pick one with --layer" in line
    assert cli("ingest", "expression", atlas, path, "--layer", "counts").exit_code == 0
    np.testing.assert_array_equal(stored_expression(atlas)[2], counts)


def test_file_without_x_or_layers_says_so(tmp_path):
    path = write_h5ad(tmp_path / "empty.h5ad", None)
    with pytest.raises(InputError, match=r"empty\.h5ad: no X matrix \(it has no layers\)$"):
        read_expression(path)


def test_layer_on_a_csv_is_refused(tmp_path):
    path = write_csv(tmp_path / "expr.csv", ["sample_id", "TP53"], [["S0", 1.0]])
    with pytest.raises(InputError, match=r"expr\.csv: --layer counts applies to AnnData \.h5ad files only"):
        read_expression(path, layer="counts")


# --- obs as sample metadata ----------------------------------------------------------


def test_categorical_obs_becomes_metadata_a_where_filter_uses(atlas, tmp_path, counts):
    path = write_h5ad(tmp_path / "expr.h5ad", counts, obs=OBS, sparse=True)
    assert cli("ingest", "expression", atlas, path).exit_code == 0
    with open_atlas(atlas, read_only=True) as opened:
        rows = opened.sql("SELECT item_id, subtype, site, age, patient_id FROM items WHERE modality = 'expression' "
                          "ORDER BY item_id").fetchall()
    expected_subtypes = [SUBTYPE_CATEGORIES[c] if c >= 0 else None for c in SUBTYPE_CODES]
    assert [r[1] for r in rows] == expected_subtypes == ["LumA", "Basal", "LumA", "LumB", None, "LumA"]
    assert [r[2] for r in rows] == OBS["site"] and [r[3] for r in rows] == OBS["age"].tolist()
    assert [r[4] for r in rows] == OBS["patient_id"]  # obs patient_id pairs samples with patients

    result = cli("remove", atlas, "--where", "subtype = 'LumA' AND age < 60", "--modality", "expression")
    assert result.exit_code == 0, result.output
    assert "removed 2 expression" in result.output  # S0 (51) and S2 (47); S5 is LumA but 66
    assert stored_expression(atlas)[0] == ["S1", "S3", "S4", "S5"]


def test_metadata_file_wins_over_obs_for_the_samples_it_lists(atlas, tmp_path, counts):
    path = write_h5ad(tmp_path / "expr.h5ad", counts, obs=OBS)
    csv = write_csv(tmp_path / "samples.csv", ["sample_id", "subtype", "stage"], [["S0", "Her2", "II"], ["S4", "", "III"]])
    result = cli("ingest", "expression", atlas, path, "--metadata", csv)
    assert result.exit_code == 0, result.output
    assert "column(s) subtype also in" in result.output and "the --metadata values are used" in result.output
    with open_atlas(atlas, read_only=True) as opened:
        rows = dict(opened.sql("SELECT item_id, subtype FROM items WHERE modality = 'expression'").fetchall())
        stages = dict(opened.sql("SELECT item_id, stage FROM items WHERE modality = 'expression'").fetchall())
    assert rows == {"S0": "Her2", "S1": "Basal", "S2": "LumA", "S3": "LumB", "S4": None, "S5": "LumA"}
    assert stages == {"S0": "II", "S4": "III", "S1": None, "S2": None, "S3": None, "S5": None}


def test_reserved_and_id_obs_columns_are_left_out_with_a_note(tmp_path, counts):
    obs = {**OBS, "modality": ["rna"] * 6, "sample_id": SAMPLES}
    profile = read_expression(write_h5ad(tmp_path / "expr.h5ad", counts, obs=obs))
    assert profile.sample_metadata.column_names == ["sample_id", "subtype", "site", "age", "patient_id"]
    assert profile.sample_metadata.column("sample_id").to_pylist() == SAMPLES
    assert any("obs column 'modality' is not read as metadata (reserved by the atlas)" in n for n in profile.notes)
    assert any("obs column 'sample_id' is not read as metadata (the sample id is obs's index)" in n
               for n in profile.notes)


# --- declared sizes are checked before anything is allocated --------------------------


def test_x_declaring_more_than_the_file_stores_is_refused(tmp_path):
    samples, genes = [f"S{i}" for i in range(2000)], [f"G{i}" for i in range(20000)]
    path = write_h5ad(tmp_path / "claim.h5ad", None, samples=samples, genes=genes)
    with h5py.File(path, "a") as handle:  # 160 MB declared, never written: 0 bytes stored
        handle.create_dataset("X", shape=(2000, 20000), dtype=np.float32, chunks=(100, 1000), compression="gzip")
    with pytest.raises(InputError, match=r"claim\.h5ad: dataset 'X' declares shape \(2000, 20000\) \(160,000,000 bytes\) "
                                         r"but the file stores 0 bytes"):
        read_expression(path)


def test_sparse_matrix_too_large_to_densify_is_refused_before_allocating(tmp_path, monkeypatch, counts):
    monkeypatch.setattr(anndata_h5ad, "MAX_DENSE_VALUES", 40)
    path = write_h5ad(tmp_path / "wide.h5ad", counts, sparse=True)
    with pytest.raises(InputError, match=r"wide\.h5ad: X is 6 x 8 values; at most 40"):
        read_expression(path)


def test_shape_disagreeing_with_obs_and_var_is_refused(tmp_path, counts):
    path = write_h5ad(tmp_path / "shape.h5ad", counts, sparse=True)
    with h5py.File(path, "a") as handle:
        handle["X"].attrs["shape"] = np.array([6, 9])
    with pytest.raises(InputError, match=r"shape\.h5ad: X has shape \(6, 9\) but obs has 6 samples and var 8 genes"):
        read_expression(path)


def test_csr_indices_outside_the_matrix_are_refused(tmp_path, counts):
    path = write_h5ad(tmp_path / "bad.h5ad", counts, sparse=True)
    with h5py.File(path, "a") as handle:
        indices = handle["X/indices"][()]
        indices[0] = 1000
        handle["X/indices"][...] = indices
    with pytest.raises(InputError, match=r"bad\.h5ad: X/indices run outside 0\.\.7"):
        read_expression(path)


def test_file_cut_short_is_one_line_naming_it(atlas, tmp_path, counts):
    path = write_h5ad(tmp_path / "cut.h5ad", counts, layers={"counts": counts})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = one_line_error(cli("ingest", "expression", atlas, path))
    assert str(path) in line and ("not a readable AnnData file" in line or "truncated or corrupt HDF5" in line)
