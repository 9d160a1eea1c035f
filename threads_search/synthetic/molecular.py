"""Molecular profiles of generated patients: bulk expression (TPM) and somatic mutations.

Expression: log-TPM = gene baseline + loadings @ state + site batch offset + noise; then
exp, tiny values set to 0 (detection limit), rows normalised to sum 1e6 (heavy-tailed,
un-logged, like a TCGA TPM matrix). Mutations: each subtype has two driver genes mutated
with high probability, TP53 is common to all, and every gene has a heavy-tailed passenger
rate (long genes such as TTN the highest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.errors import InputError
from threads_search.synthetic.config import CohortConfig
from threads_search.synthetic.design import (
    STREAM_EXPRESSION,
    STREAM_MOLECULAR_WORLD,
    STREAM_MUTATIONS,
    Patients,
    stream_rng,
)

# Subtype k's drivers are DRIVER_GENES[2k] and DRIVER_GENES[2k + 1].
DRIVER_GENES = (
    "KRAS", "EGFR", "KMT2D", "NFE2L2", "GNAS", "RNF43", "NF1", "CDKN2A", "RB1", "MEN1",
    "VHL", "PBRM1", "BRAF", "PIK3CA", "APC", "CTNNB1", "IDH1", "ATRX", "SMAD4", "FBXW7",
    "ERBB2", "ARID1A", "PTEN", "CDH1",
)
SHARED_DRIVER = "TP53"
SHARED_DRIVER_PROBABILITY = 0.35
SECOND_DRIVER_RELATIVE_PROBABILITY = 0.6
LONG_GENES = ("TTN", "MUC16", "CSMD3", "RYR2", "LRP1B", "SYNE1")  # high passenger rates
LONG_GENE_RATE_FACTOR = 15.0
MARKER_GENES = (
    "ESR1", "PGR", "KRT5", "KRT7", "KRT20", "CDX2", "NKX2-1", "NAPSA", "SOX2", "TP63",
    "VIM", "CD3E", "CD8A", "PTPRC", "MKI67", "CHGA", "SYP", "MUC2", "MUC5AC", "CA9",
    "PAX8", "EPCAM", "COL1A1", "ACTA2", "PECAM1", "CD68", "FOXA1", "GATA3",
)
HOUSEKEEPING_GENES = ("ACTB", "GAPDH", "RPLP0", "B2M")
NAMED_GENES = (SHARED_DRIVER, *DRIVER_GENES, *LONG_GENES, *MARKER_GENES, *HOUSEKEEPING_GENES)

LOADING_STD = 0.3  # log-scale change per unit of state, informative genes
MARKER_LOADING_STD = 0.45
MAX_LOG_FOLD_CHANGE = 2.5  # at most e^2.5 ~ 12x up or down from the baseline
DETECTION_LIMIT_TPM = 0.05
BARELY_EXPRESSED_FRACTION = 0.15
CHROMOSOMES = tuple(str(i) for i in range(1, 23)) + ("X",)
BASES = np.array(list("ACGT"))

# (name, Variant_Type, probability) for drivers and for passengers.
DRIVER_VARIANTS = (
    ("Missense_Mutation", "SNP", 0.75), ("Nonsense_Mutation", "SNP", 0.10),
    ("Frame_Shift_Del", "DEL", 0.08), ("Splice_Site", "SNP", 0.07),
)
PASSENGER_VARIANTS = (
    ("Missense_Mutation", "SNP", 0.55), ("Silent", "SNP", 0.25),
    ("Nonsense_Mutation", "SNP", 0.06), ("Frame_Shift_Del", "DEL", 0.05),
    ("Frame_Shift_Ins", "INS", 0.03), ("Splice_Site", "SNP", 0.03),
    ("In_Frame_Del", "DEL", 0.03),
)
MAF_COLUMNS = (  # GDC MAF names of the columns written (the keys of `_maf_row`)
    "Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Chromosome", "Start_Position",
    "End_Position", "Strand", "Variant_Classification", "Variant_Type", "Reference_Allele",
    "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "Tumor_Sample_Barcode",
    "Matched_Norm_Sample_Barcode", "t_depth", "t_ref_count", "t_alt_count",
)


def gene_names(config: CohortConfig) -> tuple[str, ...]:
    """Known HGNC symbols first, then systematic `GENE00001`-style names up to n_genes."""
    if len(config.subtypes) * 2 > len(DRIVER_GENES):
        raise InputError(
            f"CohortConfig.subtypes: at most {len(DRIVER_GENES) // 2} subtypes have drivers"
        )
    if config.n_genes < len(NAMED_GENES):
        raise InputError(f"CohortConfig.n_genes: needs at least {len(NAMED_GENES)} genes")
    n_systematic = config.n_genes - len(NAMED_GENES)
    return NAMED_GENES + tuple(f"GENE{i:05d}" for i in range(1, n_systematic + 1))


@dataclass(frozen=True)
class MolecularWorld:
    """Gene-level parameters; G = n_genes.

    baseline_log_tpm: (G,)  loadings: (G, latent_dim)  site_batch: (n_sites, G)
    passenger_rate: (G,)  chromosome: (G,) str  gene_start: (G,) int  gene_length: (G,) int
    """

    genes: tuple[str, ...]
    baseline_log_tpm: np.ndarray
    loadings: np.ndarray
    site_batch: np.ndarray
    passenger_rate: np.ndarray
    chromosome: np.ndarray
    gene_start: np.ndarray
    gene_length: np.ndarray


def draw_molecular_world(config: CohortConfig) -> MolecularWorld:
    """Gene baselines, state loadings, site batch offsets, passenger rates and loci."""
    rng = stream_rng(config, STREAM_MOLECULAR_WORLD)
    genes = gene_names(config)
    index = {gene: i for i, gene in enumerate(genes)}
    n_genes = len(genes)

    baseline = rng.normal(1.0, 1.5, n_genes)
    # A share of genes is barely expressed: their TPM often falls under the detection limit.
    barely_expressed = rng.random(n_genes) < BARELY_EXPRESSED_FRACTION
    barely_expressed[: len(NAMED_GENES)] = False
    baseline[barely_expressed] -= 6.0
    baseline[[index[g] for g in HOUSEKEEPING_GENES]] += 4.0
    informative = rng.random(n_genes) < config.informative_gene_fraction
    loadings = LOADING_STD * rng.standard_normal((n_genes, config.latent_dim))
    loadings[~informative] = 0.0
    markers = [index[g] for g in MARKER_GENES]
    loadings[markers] = MARKER_LOADING_STD * rng.standard_normal((len(markers), config.latent_dim))
    loadings[[index[g] for g in HOUSEKEEPING_GENES]] = 0.0
    site_batch = config.batch_shift * rng.standard_normal((config.n_sites, n_genes))

    rate = config.background_mutation_rate * rng.lognormal(-0.5, 1.0, n_genes)
    rate[[index[g] for g in LONG_GENES]] *= LONG_GENE_RATE_FACTOR
    gene_length = np.round(rng.lognormal(np.log(20_000), 1.0, n_genes)).astype(np.int64) + 1_000
    return MolecularWorld(
        genes=genes,
        baseline_log_tpm=baseline,
        loadings=loadings,
        site_batch=site_batch,
        passenger_rate=np.clip(rate, 0.0, 0.5),
        chromosome=rng.choice(np.array(CHROMOSOMES), size=n_genes),
        gene_start=rng.integers(1_000_000, 200_000_000, n_genes),
        gene_length=gene_length,
    )


def expression_tpm(config: CohortConfig, world: MolecularWorld, patients: Patients):
    """TPM matrix of the patients with expression: (rows, (n_with_expression, G) float64).

    Rows index `Patients`; every row sums to 1e6.
    """
    rng = stream_rng(config, STREAM_EXPRESSION)
    rows = np.flatnonzero(patients.has_expression)
    state_effect = patients.state[rows] @ world.loadings.T
    # Fold changes saturate (tanh): no gene grows without bound and swallows the library.
    state_effect = MAX_LOG_FOLD_CHANGE * np.tanh(state_effect / MAX_LOG_FOLD_CHANGE)
    log_tpm = (
        world.baseline_log_tpm
        + state_effect
        + world.site_batch[patients.site_index[rows]]
        + config.expression_noise * rng.standard_normal((len(rows), len(world.genes)))
    )
    tpm = np.exp(log_tpm - log_tpm.max(axis=1, keepdims=True))
    tpm *= 1e6 / tpm.sum(axis=1, keepdims=True)
    tpm[tpm < DETECTION_LIMIT_TPM] = 0.0
    tpm *= 1e6 / tpm.sum(axis=1, keepdims=True)
    return rows, tpm


def mutation_probabilities(config: CohortConfig, world: MolecularWorld, subtype_index):
    """(n_patients, G) chance that each gene carries a mutation, given each patient's subtype."""
    index = {gene: i for i, gene in enumerate(world.genes)}
    probability = np.tile(world.passenger_rate, (len(subtype_index), 1))
    probability[:, index[SHARED_DRIVER]] = SHARED_DRIVER_PROBABILITY
    first = np.array([index[DRIVER_GENES[2 * k]] for k in subtype_index], dtype=int)
    second = np.array([index[DRIVER_GENES[2 * k + 1]] for k in subtype_index], dtype=int)
    patient = np.arange(len(subtype_index))
    probability[patient, first] = config.driver_probability
    probability[patient, second] = config.driver_probability * SECOND_DRIVER_RELATIVE_PROBABILITY
    return probability


def _pick_variants(rng, table, count):
    names, types, weights = zip(*table)
    choice = rng.choice(len(table), size=count, p=np.array(weights) / sum(weights))
    return np.array(names)[choice], np.array(types)[choice]


def mutation_records(config: CohortConfig, world: MolecularWorld, patients: Patients):
    """MAF rows (dicts, sorted by sample then gene) for the patients with a mutation panel.

    Every profiled sample gets at least one non-silent mutation, so none is invisible in
    the MAF (a MAF cannot list a sample without events).
    """
    rng = stream_rng(config, STREAM_MUTATIONS)
    rows = np.flatnonzero(patients.has_mutations)
    probability = mutation_probabilities(config, world, patients.subtype_index[rows])
    mutated = rng.random(probability.shape) < probability
    empty = np.flatnonzero(~mutated.any(axis=1))
    mutated[empty, rng.integers(len(world.genes), size=len(empty))] = True

    sample_pos, gene = np.nonzero(mutated)
    driver_genes = {SHARED_DRIVER, *DRIVER_GENES}
    is_driver = np.array([world.genes[g] in driver_genes for g in gene], dtype=bool)
    classification = np.empty(len(gene), dtype=object)
    variant_type = np.empty(len(gene), dtype=object)
    for mask, table in ((is_driver, DRIVER_VARIANTS), (~is_driver, PASSENGER_VARIANTS)):
        classification[mask], variant_type[mask] = _pick_variants(rng, table, int(mask.sum()))
    forced = np.isin(sample_pos, empty)
    classification[forced & (classification == "Silent")] = "Missense_Mutation"

    start = world.gene_start[gene] + rng.integers(0, world.gene_length[gene])
    reference = BASES[rng.integers(4, size=len(gene))]
    alternative = BASES[(np.searchsorted(BASES, reference) + rng.integers(1, 4, len(gene))) % 4]
    depth = 30 + rng.poisson(70, len(gene))
    alt_count = rng.binomial(depth, rng.uniform(0.08, 0.5, len(gene)))
    records = []
    for i in range(len(gene)):
        sample = patients.sample_ids[rows[sample_pos[i]]]
        records.append(
            _maf_row(world, sample, int(gene[i]), str(classification[i]), str(variant_type[i]),
                     int(start[i]), str(reference[i]), str(alternative[i]),
                     int(depth[i]), int(alt_count[i]))
        )
    return records


def _maf_row(world, sample, gene, classification, variant_type, start, ref, alt, depth, alt_count):
    """One MAF line as a dict keyed by the GDC MAF column names."""
    if variant_type == "DEL":
        length = 3 if classification == "In_Frame_Del" else 1
        ref, alt, end = ref * length, "-", start + length - 1
    elif variant_type == "INS":
        ref, end = "-", start + 1
    else:
        end = start
    patient = sample[: -len("-01A")]
    return {
        "Hugo_Symbol": world.genes[gene],
        "Entrez_Gene_Id": 0,
        "Center": "SYN",
        "NCBI_Build": "GRCh38",
        "Chromosome": f"chr{world.chromosome[gene]}",
        "Start_Position": start,
        "End_Position": end,
        "Strand": "+",
        "Variant_Classification": classification,
        "Variant_Type": variant_type,
        "Reference_Allele": ref,
        "Tumor_Seq_Allele1": ref,
        "Tumor_Seq_Allele2": alt,
        "Tumor_Sample_Barcode": sample,
        "Matched_Norm_Sample_Barcode": f"{patient}-10A",
        "t_depth": depth,
        "t_ref_count": depth - alt_count,
        "t_alt_count": alt_count,
    }

