"""Request bodies of the JSON API, validated by FastAPI (unknown fields refused)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from threads_search.errors import InputError

MAX_K = 1000
MAX_FILTER_CHARS = 4000


class Target(str, Enum):
    slides = "slides"
    expression = "expression"
    mutations = "mutations"


class ProfileModality(str, Enum):
    expression = "expression"
    mutations = "mutations"


class SearchSettings(BaseModel):
    """What every query kind shares: the CLI's `search` options."""

    model_config = ConfigDict(extra="forbid")

    target: Target = Target.slides
    k: int = Field(10, ge=1, le=MAX_K)
    where: str | None = Field(None, max_length=MAX_FILTER_CHARS, description="SQL filter over metadata columns.")
    facets: dict[str, list[str | None]] = Field(default_factory=dict,
                                                description="Metadata column -> accepted values (any of them).")
    include_same_patient: bool = False
    one_per_patient: bool = False
    model_id: str | None = Field(None, max_length=64)
    label: str | None = Field(None, max_length=200, description="Column for the majority vote.")

    def options(self):
        from threads_search.search.query import SearchOptions

        return SearchOptions(target=self.target.value, k=self.k, where=self.where or None,
                             include_same_patient=self.include_same_patient, model_id=self.model_id, label=self.label,
                             facets=self.facets or None, one_per_patient=self.one_per_patient)


class SearchRequest(SearchSettings):
    """A query by an atlas item or a stored prototype: exactly one of the three sources."""

    slide_id: str | None = Field(None, max_length=1000)
    sample_id: str | None = Field(None, max_length=1000)
    modality: ProfileModality | None = Field(None, description="Which profile sample_id names, when it is both.")
    prototype: str | None = Field(None, max_length=1000, description="NAME:CLASS of a stored prototype set.")

    def query(self):
        from threads_search.search.query import Query

        given = [name for name in ("slide_id", "sample_id", "prototype") if getattr(self, name)]
        if len(given) != 1:
            raise InputError(f"give exactly one of slide_id, sample_id, prototype; got {', '.join(given) or 'none'}")
        return Query(slide_id=self.slide_id or None, sample_id=self.sample_id or None, prototype=self.prototype or None,
                     sample_modality=self.modality.value if self.modality else None)

    def kind(self) -> str:
        return next(name for name in ("slide_id", "sample_id", "prototype") if getattr(self, name))


class FacetRequest(BaseModel):
    """Value counts of metadata columns under a filter and a facet selection."""

    model_config = ConfigDict(extra="forbid")

    target: Target = Target.slides
    where: str | None = Field(None, max_length=MAX_FILTER_CHARS)
    facets: dict[str, list[str | None]] = Field(default_factory=dict)
    columns: list[str] | None = Field(None, description="Default: every column with 2-50 distinct values.")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prototypes: str = Field(..., max_length=200)
    where: str | None = Field(None, max_length=MAX_FILTER_CHARS)
