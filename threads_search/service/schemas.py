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


MAX_LEVEL0_PX = 10_000_000  # beyond any scanned slide (a 10 m side at 1 um/px); larger is a typo or an attack
MAX_REGIONS_PER_SLIDE = 50


class RegionGrouping(str, Enum):
    regions = "regions"
    slides = "slides"


class RegionBox(BaseModel):
    """A box on the query slide in level-0 pixels (the CLI's `--region X,Y,W,H`)."""

    model_config = ConfigDict(extra="forbid")

    x: int = Field(..., ge=0, le=MAX_LEVEL0_PX)
    y: int = Field(..., ge=0, le=MAX_LEVEL0_PX)
    w: int = Field(..., gt=0, le=MAX_LEVEL0_PX)
    h: int = Field(..., gt=0, le=MAX_LEVEL0_PX)


class RegionSearchRequest(BaseModel):
    """A region query on an atlas slide: a box or one patch row (the CLI's `search --region / --patch`)."""

    model_config = ConfigDict(extra="forbid")

    slide_id: str = Field(..., min_length=1, max_length=1000)
    region: RegionBox | None = None
    patch: int | None = Field(None, ge=0, le=2**24 - 1, description="Row N of the slide's feature file.")
    k: int = Field(10, ge=1, le=MAX_K)
    where: str | None = Field(None, max_length=MAX_FILTER_CHARS, description="SQL filter over slide metadata.")
    include_same_patient: bool = False
    group_by: RegionGrouping = Field(RegionGrouping.regions,
                                     description="regions: the matching regions; slides: slides ranked by region votes.")
    regions_per_slide: int = Field(5, ge=0, le=MAX_REGIONS_PER_SLIDE,
                                   description="With group_by slides: each slide's best N matched regions (`regions`).")
    label: str | None = Field(None, max_length=200, description="Column for the majority vote.")

    def query(self):
        from threads_search.search.regions import RegionQuery

        if (self.region is None) == (self.patch is None):
            raise InputError("give exactly one of region {x, y, w, h} (level-0 px) or patch")
        box = None if self.region is None else (self.region.x, self.region.y, self.region.w, self.region.h)
        return RegionQuery(slide_id=self.slide_id, region=box, patch=self.patch)

    def options(self):
        from threads_search.search.regions import RegionOptions

        grouped = self.group_by is RegionGrouping.slides
        return RegionOptions(k=self.k, where=self.where or None, include_same_patient=self.include_same_patient,
                             group_by="slide" if grouped else None, label=self.label,
                             regions_per_slide=self.regions_per_slide if grouped else 0)
