"""`create_app`: the FastAPI application of `threads-search serve`.

Read-only: every route reads the atlas (GET, or POST for query bodies and uploads) and none
writes it (thumbnails made from raw slides are cached as files beside it). No CORS headers are
sent, so other sites' pages cannot call the API from a browser.
"""

from __future__ import annotations

from threads_search.service.config import ServiceConfig


def create_app(config: ServiceConfig, index_source=None):
    """The app for one atlas; the atlas is opened here, once (a bad folder is refused before serving).

    `index_source(atlas, model_id, target)` answers searches from another index than the recorded
    one (`serve --ray` passes the sharded indexes on Ray actors); it is closed at shutdown."""
    from fastapi import FastAPI

    from threads_search import __version__
    from threads_search.service import health_routes, image_routes, item_routes, page_routes, search_routes
    from threads_search.service.handle import AtlasHandle
    from threads_search.service.http_errors import install_error_handlers
    from threads_search.service.images import SlideImageStore
    from threads_search.service.metrics import Metrics, MetricsMiddleware
    from threads_search.service.state import ServiceState

    config = config.checked()
    handle = AtlasHandle(config.atlas)
    metrics = Metrics()
    app = FastAPI(title="threads-search", version=__version__, docs_url=None, redoc_url=None,
                  description="Slide and molecular-profile retrieval after THREADS: the CLI's search as JSON, "
                              "slide images by item id, attention heatmaps. Send `Authorization: Bearer TOKEN` "
                              "when the service was started with --token.")
    app.state.service = ServiceState(config=config, handle=handle, metrics=metrics,
                                     images=SlideImageStore(handle.root), index_source=index_source)
    install_error_handlers(app)
    for module in (search_routes, item_routes, image_routes, health_routes, page_routes):
        app.include_router(module.router)
    page_routes.mount_static(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.router.on_shutdown.append(handle.close)
    if index_source is not None and hasattr(index_source, "close"):
        app.router.on_shutdown.append(index_source.close)
    return app


def uvicorn_config(app, host: str, port: int, log_level: str = "warning"):
    """How uvicorn runs the app: no server banner, no trust in forwarded-for headers."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False)


def serve(config: ServiceConfig, log_level: str = "warning", index_source=None) -> None:
    """Run the app on uvicorn until interrupted."""
    import uvicorn

    app = create_app(config, index_source)
    uvicorn.Server(uvicorn_config(app, config.host, config.port, log_level)).run()
