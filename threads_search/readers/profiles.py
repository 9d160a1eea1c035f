"""Molecular profile files users already have (SPEC §3) -> `ProfileMatrix`.

Expression: CSV / TSV / Parquet with samples as rows (first column the sample id) or genes as
rows (TCGA / Xena style), or AnnData `.h5ad`. Mutations: MAF, or a samples x genes 0/1 matrix.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.errors import InputError

SCALES = ("counts", "tpm", "log")
# A header wider than this is not a gene table (Ensembl has ~60k genes); refused before parsing.
MAX_COLUMNS = 200_000
MAX_HEADER_BYTES = 16 << 20
# Variant classes that do not change the protein; a gene is 'mutated' only by the others.
SILENT_CLASSES = frozenset({"Silent", "Intron", "3'UTR", "5'UTR", "3'Flank", "5'Flank", "IGR", "RNA", "lincRNA", "Splice_Region"})
MAF_REQUIRED = ("Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification")


@dataclass
class ProfileMatrix:
    """`values` is `(n_samples, n_genes) float32`; rows follow `sample_ids`, columns `genes`.

    `scale` is counts | tpm | log | binary once known (recorded at ingest). `sample_metadata`
    is per-sample columns the file itself carries (AnnData `obs`), a pyarrow Table keyed by
    `sample_id`; `notes` say what of the file was left out.
    """

    path: Path
    sample_ids: list[str]
    genes: list[str]
    values: np.ndarray
    scale: str | None = None
    sample_metadata: object | None = None  # pyarrow.Table
    notes: list[str] = field(default_factory=list)


def hash_file(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")


def _read_table(path: Path, comment: str | None = None):
    """A delimited or Parquet file as a pyarrow Table (every column as read, no inference of ids)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    with open(path, "rb") as handle:
        header = handle.readline(MAX_HEADER_BYTES + 1)
    n_columns = max(header.count(b","), header.count(b"\t")) + 1
    if len(header) > MAX_HEADER_BYTES or n_columns > MAX_COLUMNS:
        raise InputError(f"{path}: header of {len(header):,} bytes and {n_columns:,} columns; at most "
                         f"{MAX_COLUMNS:,} columns are read")
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        lines = [line for line in (handle.readline() for _ in range(50)) if line and not (comment and line.startswith(comment))]
    if not lines:
        raise InputError(f"{path}: empty file")
    tabs, commas = lines[0].count("\t"), lines[0].count(",")
    delimiter = "\t" if tabs > commas or (tabs == commas and path.suffix in (".tsv", ".txt", ".maf")) else ","
    skip = 0
    if comment:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.startswith(comment):
                    break
                skip += 1
    try:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(skip_rows=skip, block_size=1 << 26),
                              parse_options=pacsv.ParseOptions(delimiter=delimiter),
                              convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as error:
        raise InputError(f"{path}: not a readable table ({str(error).splitlines()[0]})") from None


def _numeric_matrix(path: Path, table, row_names: list[str], value_columns: list[str], genes_as_rows: bool) -> np.ndarray:
    """Stack value columns into float32, naming the first non-numeric or empty cell on failure."""
    import pyarrow as pa

    columns = []
    for index, name in enumerate(value_columns):
        column = table.column(index + 1)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_null(column.type)):
            for row, value in enumerate(column.to_pylist()):
                try:
                    float(value)
                except (TypeError, ValueError):
                    where = f"gene {row_names[row]}, sample column {name}" if genes_as_rows else f"row {row + 2} (sample {row_names[row]}), column {name}"
                    raise InputError(f"{path}: {where}: '{value}' is not a number") from None
        array = np.asarray(column.combine_chunks().to_numpy(zero_copy_only=False), dtype=np.float64)
        if not np.isfinite(array).all():
            row = int(np.argwhere(~np.isfinite(array))[0][0])
            where = f"gene {row_names[row]}, sample column {name}" if genes_as_rows else f"row {row + 2} (sample {row_names[row]}), column {name}"
            raise InputError(f"{path}: {where}: empty, NaN or infinite value")
        columns.append(array.astype(np.float32))
    return np.stack(columns, axis=1) if columns else np.zeros((len(row_names), 0), np.float32)


def refuse_duplicates(path: Path, names: list[str], what: str) -> None:
    """InputError naming the first name seen twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{path}: duplicate {what} '{name}'")
        seen.add(name)


# Names that can only be genes (or probes of genes): a sample axis full of them is a transposed file.
COMMON_GENE_SYMBOLS = frozenset("""
TP53 EGFR KRAS BRAF PIK3CA PTEN MYC ERBB2 ESR1 PGR GAPDH ACTB CDH1 APC BRCA1 BRCA2 ATM RB1 NF1 CDKN2A
IDH1 IDH2 ATRX TERT VIM KRT5 KRT7 KRT8 KRT14 KRT18 KRT19 KRT20 MKI67 FOXA1 GATA3 AR CD3E CD4 CD8A PTPRC
EPCAM SOX2 NKX2-1 NAPSA TTF1 SFTPC CHGA SYP NCAM1 ALK ROS1 RET MET NTRK1 FGFR1 FGFR2 FGFR3 CCND1 CDK4 MDM2
SMAD4 CTNNB1 VHL PBRM1 SETD2 BAP1 KDM5C ARID1A KMT2D KMT2C NOTCH1 FBXW7 STK11 KEAP1 NFE2L2 TTN MUC16 CSMD3
RYR2 LRP1B ZFHX4 SPTA1 COL1A1 COL1A2 COL3A1 FN1 SPARC POSTN ACTA2 PECAM1 CD34 VWF PDGFRB TOP2A BIRC5 CCNB1
AURKA UBE2C PCNA MCM2 TYMS HER2 B2M HLA-A HLA-B CD274 PDCD1 CTLA4 LAG3 FOXP3 GZMB PRF1 IFNG CXCL9 CXCL10
""".split())
_GENE_PATTERN = re.compile(r"^(ENS[A-Z]*G\d{6,}(\.\d+)?|X?\d{4,}(_[sxa])?_at|ILMN_\d+|A_\d{2}_P\d+)$")
_SAMPLE_PATTERN = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}.*|GSM\d+)$")


def _gene_like(names: list[str]) -> int:
    return sum(1 for n in names if n.upper() in COMMON_GENE_SYMBOLS or _GENE_PATTERN.match(n))


def _sample_like(names: list[str]) -> int:
    return sum(1 for n in names if _SAMPLE_PATTERN.match(n))


def check_orientation(path: Path, samples: list[str], genes: list[str], genes_as_rows: bool) -> None:
    """Refuse a layout that reads genes as samples: gene-like names on the sample axis and few on the gene axis."""
    on_samples, on_genes = _gene_like(samples), _gene_like(genes)
    transposed = on_samples >= 3 and on_samples >= 5 * on_genes and on_samples >= len(samples) // 20
    transposed = transposed or (_sample_like(genes) >= 3 and _sample_like(genes) > _sample_like(samples))
    if not transposed:
        return
    examples = ", ".join((n for n in samples if n.upper() in COMMON_GENE_SYMBOLS or _GENE_PATTERN.match(n)))[:80] \
        or ", ".join(genes[:3])
    if genes_as_rows:
        raise InputError(f"{path}: with --genes-as-rows the samples would be named like genes ({examples}) "
                         f"and the genes like samples; this file has samples as rows: drop --genes-as-rows")
    raise InputError(f"{path}: the rows are named like genes ({examples}) and the columns like samples; "
                     f"this file has genes as rows: add --genes-as-rows")


def read_expression(path: str | os.PathLike, genes_as_rows: bool = False, layer: str | None = None) -> ProfileMatrix:
    """Read an expression matrix in any supported layout into samples x genes.

    `layer` picks an AnnData layer (`layers/<layer>`) instead of `X`; only for `.h5ad` files.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix == ".h5ad":
        from threads_search.readers.anndata_h5ad import read_h5ad

        return read_h5ad(path, layer)
    if layer is not None:
        raise InputError(f"{path}: --layer {layer} applies to AnnData .h5ad files only")
    table = _read_table(path)
    if table.num_columns < 2 or table.num_rows == 0:
        raise InputError(f"{path}: no data (need an id column and at least one value column and row)")
    first = table.column(0).to_pylist()
    if any(v is None for v in first):
        raise InputError(f"{path}: row {first.index(None) + 2}, column {table.column_names[0]}: empty id")
    row_names = [str(v) for v in first]
    value_columns = [str(c) for c in table.column_names[1:]]
    matrix = _numeric_matrix(path, table, row_names, value_columns, genes_as_rows)
    if genes_as_rows:
        genes, samples, matrix = row_names, value_columns, matrix.T.copy()
    else:
        samples, genes = row_names, value_columns
    refuse_duplicates(path, genes, "gene name")
    refuse_duplicates(path, samples, "sample id")
    check_orientation(path, samples, genes, genes_as_rows)
    return ProfileMatrix(path=path, sample_ids=samples, genes=genes, values=matrix)


def resolve_scale(profile: ProfileMatrix, requested: str = "auto") -> tuple[str, str]:
    """The value scale of an expression matrix and why: detected, or checked when given."""
    values = profile.values
    negative = np.argwhere(values < 0)
    if requested in ("counts", "tpm"):
        if negative.size:
            row, column = (int(v) for v in negative[0])
            raise InputError(f"{profile.path}: sample {profile.sample_ids[row]}, gene {profile.genes[column]}: "
                             f"negative value {values[row, column]:g} on a {requested} scale")
        return requested, "given with --scale"
    if requested == "log":
        return "log", "given with --scale"
    if requested != "auto":
        raise InputError(f"--scale {requested}: expected auto, {', '.join(SCALES)}")
    maximum = float(values.max())
    if negative.size:
        return "log", "negative values present: already log-scaled (or centred)"
    if maximum <= 50:
        return "log", f"maximum {maximum:.3g} <= 50: already log-scaled"
    if np.all(values == np.round(values)):
        return "counts", f"integer values up to {maximum:.3g}: raw counts"
    return "tpm", f"non-integer values up to {maximum:.3g}: TPM/FPKM-like, un-logged"


def read_mutations(path: str | os.PathLike) -> ProfileMatrix:
    """A MAF (-> samples x genes multi-hot of non-silent mutations) or a 0/1 matrix."""
    path = Path(path)
    _require_file(path)
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        header = next((line for line in handle if not line.startswith("#")), "")
    if path.suffix == ".maf" or "Hugo_Symbol" in header or "Tumor_Sample_Barcode" in header:
        return _read_maf(path)
    profile = read_expression(path)
    bad = np.argwhere((profile.values != 0) & (profile.values != 1))
    if bad.size:
        row, column = (int(v) for v in bad[0])
        raise InputError(f"{path}: row {row + 2} (sample {profile.sample_ids[row]}), column {profile.genes[column]}: "
                         f"'{profile.values[row, column]:g}' is not 0 or 1")
    return profile


def _read_maf(path: Path) -> ProfileMatrix:
    table = _read_table(path, comment="#")
    missing = [c for c in MAF_REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: MAF without required column(s) {', '.join(missing)} (columns: {', '.join(table.column_names[:12])})")
    samples = table.column("Tumor_Sample_Barcode").to_pylist()
    genes = table.column("Hugo_Symbol").to_pylist()
    classes = table.column("Variant_Classification").to_pylist()
    for row, (sample, gene) in enumerate(zip(samples, genes)):
        if not sample or not gene:
            column = "Tumor_Sample_Barcode" if not sample else "Hugo_Symbol"
            raise InputError(f"{path}: row {row + 2}, column {column}: empty value")
    sample_ids = sorted(set(map(str, samples)))
    gene_names = sorted({str(g) for g, c in zip(genes, classes) if c not in SILENT_CLASSES})
    sample_index = {s: i for i, s in enumerate(sample_ids)}
    gene_index = {g: i for i, g in enumerate(gene_names)}
    matrix = np.zeros((len(sample_ids), len(gene_names)), dtype=np.float32)
    for sample, gene, variant_class in zip(samples, genes, classes):
        if variant_class not in SILENT_CLASSES:
            matrix[sample_index[str(sample)], gene_index[str(gene)]] = 1.0
    return ProfileMatrix(path=path, sample_ids=sample_ids, genes=gene_names, values=matrix)
