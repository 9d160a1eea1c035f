"""Request counts and latency histograms, exposed at `/metrics` in Prometheus' text format.

A pure ASGI middleware (no per-request task switching) times every request by its route
template (`/api/images/{vid}/thumbnail.png`, not the filled-in path, so ids never become label
values) and also sets the page's security headers.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Scripts and styles from this server only; thumbnails and overlays arrive as blob:/data: URLs. The
    # hash admits the one <style> element OpenSeadragon 6.1.1 inserts (its touch-screen focus rule).
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                 b"style-src 'self' 'sha256-9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE='; "
                                 b"script-src 'self'; connect-src 'self' blob: data:; frame-ancestors 'none'"),
]
# The vendored OpenAPI page runs an inline bootstrap script; only /docs gets this looser policy.
DOCS_POLICY = b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"


class Metrics:
    """Thread-safe counters: requests by (route, method, status), latency by route, queries by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.queries: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.buckets[route][bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self.latency_sum[route] += seconds

    def count_query(self, kind: str, target: str) -> None:
        with self._lock:
            self.queries[(kind, target)] += 1

    def total_queries(self) -> int:
        with self._lock:
            return sum(self.queries.values())

    def prometheus_text(self) -> str:
        lines = ["# HELP threads_search_requests_total HTTP requests by route, method and status.",
                 "# TYPE threads_search_requests_total counter"]
        with self._lock:
            for (route, method, status), count in sorted(self.requests.items()):
                lines.append(f'threads_search_requests_total{{route="{route}",method="{method}",status="{status}"}} {count}')
            lines += ["# HELP threads_search_request_seconds Request latency by route.",
                      "# TYPE threads_search_request_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS_S + (float("inf"),), counts):
                    cumulative += count
                    label = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'threads_search_request_seconds_bucket{{route="{route}",le="{label}"}} {cumulative}')
                lines.append(f'threads_search_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
                lines.append(f'threads_search_request_seconds_count{{route="{route}"}} {cumulative}')
            lines += ["# HELP threads_search_queries_total Searches by query kind and target.",
                      "# TYPE threads_search_queries_total counter"]
            for (kind, target), count in sorted(self.queries.items()):
                lines.append(f'threads_search_queries_total{{kind="{kind}",target="{target}"}} {count}')
        lines += ["# HELP threads_search_uptime_seconds Seconds since the service started.",
                  "# TYPE threads_search_uptime_seconds gauge", f"threads_search_uptime_seconds {time.time() - self.started:.1f}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Times each HTTP request into `metrics` and adds the security headers to every response."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        docs = scope["path"] == "/docs"

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                for name, value in SECURITY_HEADERS:
                    headers.append((name, DOCS_POLICY if docs and name == b"content-security-policy" else value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            self.metrics.observe(route, scope["method"], status["code"], time.perf_counter() - started)
