"""What every route shares (the app's state), the bearer-token check, and JSON rendering."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field

from fastapi import Request

from threads_search.service.config import ServiceConfig
from threads_search.service.handle import AtlasHandle
from threads_search.service.http_errors import check_bearer
from threads_search.lru import LruCache
from threads_search.service.images import SlideImageStore
from threads_search.service.metrics import Metrics

ATTENTION_CACHE_SIZE = 64


@dataclass
class ServiceState:
    config: ServiceConfig
    handle: AtlasHandle
    metrics: Metrics
    images: SlideImageStore
    attention: LruCache = field(default_factory=lambda: LruCache(ATTENTION_CACHE_SIZE))
    searches: threading.BoundedSemaphore | None = None
    index_source: object = None  # (atlas, model_id, target) -> index or None; `serve --ray` gives one

    def __post_init__(self) -> None:
        if self.searches is None:
            self.searches = threading.BoundedSemaphore(self.config.max_parallel_searches)


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def authorised(request: Request) -> None:
    """A dependency of every data route: the bearer token, when the service has one."""
    check_bearer(request.headers.get("authorization"), service_state(request).config.token)


def _finite(value):
    """NaN / Inf (possible in float metadata columns) as null: browsers cannot parse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(payload, status_code: int = 200):
    from fastapi.responses import Response

    body = json.dumps(_finite(payload), default=str, allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status_code, media_type="application/json")
