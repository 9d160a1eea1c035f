"""`/health` (open, for probes) and `/metrics` (Prometheus text; behind the token like the API)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from threads_search.service.state import ServiceState, authorised, json_response, service_state

router = APIRouter(tags=["service"])


@router.get("/health", summary="Whether the atlas is open, which generation is served, uptime")
def health(state: ServiceState = Depends(service_state)):
    generation = state.handle.current()
    return json_response({"status": "ok" if state.handle.last_error is None else "stale",
                          "generation": generation.number, "opened_at": generation.opened_at,
                          "stale_reason": state.handle.last_error,
                          "uptime_s": round(time.time() - state.metrics.started, 1),
                          "queries": state.metrics.total_queries()})


@router.get("/metrics", dependencies=[Depends(authorised)], summary="Request counts and latency histograms")
def metrics(state: ServiceState = Depends(service_state)):
    return PlainTextResponse(state.metrics.prometheus_text(), media_type="text/plain; version=0.0.4")
