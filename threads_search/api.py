"""The Python API: the same functions the CLI commands call, one to one.

    from threads_search.api import open_atlas, search_atlas, Query, SearchOptions
    with open_atlas("atlas") as atlas:
        result = search_atlas(atlas, Query(slide_id="TCGA-XX-0001-01Z-00-DX1"), SearchOptions(k=5))
"""

from threads_search.atlas.store import init_atlas, open_atlas
from threads_search.jobs.embed import embed_atlas
from threads_search.jobs.evaluate import evaluate_atlas, fewshot_atlas, write_evaluation
from threads_search.jobs.index import build_atlas_indexes
from threads_search.atlas.info import atlas_info
from threads_search.ingest.profiles import ingest_expression, ingest_mutations
from threads_search.ingest.slides import ingest_slides
from threads_search.atlas.stored_models import resolve_model_id
from threads_search.search.prototypes import build_prototypes, classify_slides
from threads_search.search.query import Query, SearchOptions, SearchResult, search_atlas, search_many
from threads_search.training.job import train_atlas_model

__all__ = [
    "Query", "SearchOptions", "SearchResult", "atlas_info", "build_atlas_indexes", "build_prototypes", "classify_slides",
    "embed_atlas", "evaluate_atlas", "fewshot_atlas", "ingest_expression", "ingest_mutations", "ingest_slides",
    "init_atlas", "open_atlas", "resolve_model_id", "search_atlas", "search_many", "train_atlas_model", "write_evaluation",
]
