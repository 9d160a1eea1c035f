"""Retrieval evaluation on held-out cohorts (SPEC §7): metrics, chance, CIs, plots, few-shot.

Works on numpy arrays of embeddings and labels only; the atlas and the CLI feed it. Plots
import matplotlib and few-shot imports scikit-learn only when called.
"""

from threads_search.evaluation.bootstrap import patient_bootstrap_ci
from threads_search.evaluation.fewshot import FewShotCurve, fewshot_curve
from threads_search.evaluation.metrics import METRICS, RankedQueries, RetrievalMetric
from threads_search.evaluation.plots import plot_fewshot_curve, write_plots
from threads_search.evaluation.ranking import rank_database
from threads_search.evaluation.report import MetricTable, RetrievalReport
from threads_search.evaluation.retrieval import DEFINITIONS, evaluate_ranking, evaluate_retrieval

__all__ = [
    "DEFINITIONS",
    "METRICS",
    "FewShotCurve",
    "MetricTable",
    "RankedQueries",
    "RetrievalMetric",
    "RetrievalReport",
    "evaluate_ranking",
    "evaluate_retrieval",
    "fewshot_curve",
    "patient_bootstrap_ci",
    "plot_fewshot_curve",
    "rank_database",
    "write_plots",
]
