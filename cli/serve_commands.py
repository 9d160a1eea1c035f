"""`serve ATLAS`: the retrieval service and the case-review page."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(atlas: Path = typer.Argument(..., help="Atlas folder."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs --token."),
          port: int = typer.Option(8000, "--port", help="TCP port."),
          token: str = typer.Option(None, "--token", envvar="THREADS_SEARCH_TOKEN", show_envvar=True,
                                    help="Bearer token every API request must send (the page asks for it once)."),
          max_upload: str = typer.Option("512MB", "--max-upload", help="Largest uploaded query file, e.g. 200MB."),
          reports: Path = typer.Option(None, "--reports", help="Folder of `eval --json` reports to list on the page."),
          ray: str = typer.Option(None, "--ray", help="Answer from the sharded indexes (`index --shards N`), one Ray actor per "
                                                      "shard: auto, HOST:PORT or local. Needs the `ray` extra."),
          shard_cpus: float = typer.Option(1.0, "--shard-cpus", help="With --ray: CPUs each shard actor reserves."),
          quiet: bool = typer.Option(False, "--quiet", help="Print only the address.")) -> None:
    """Serve the atlas: a JSON API mirroring `search`, slide images and the review page (read-only)."""
    from threads_search.cli.model_commands import parse_bytes
    from threads_search.service.app import serve as run
    from threads_search.service.config import ServiceConfig

    config = ServiceConfig(atlas=atlas, host=host, port=port, token=token,
                           max_upload_bytes=parse_bytes(max_upload, "--max-upload"), reports_dir=reports).checked()
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    typer.echo(f"serving {atlas} at {address} (page), {address}docs (API)" + ("; bearer token required" if token else ""))
    if not quiet:
        typer.echo("read-only; Ctrl-C stops the service")
    index_source = None
    if ray is not None:
        from threads_search.distributed.cluster import require_ray
        from threads_search.distributed.serving import ShardedIndexes
        from threads_search.distributed.shards import ShardPlacement

        require_ray()
        index_source = ShardedIndexes(ray, ShardPlacement(num_cpus=shard_cpus))
        if not quiet:
            typer.echo(f"searches answered by shard actors on the Ray cluster at {ray}")
    run(config, log_level="warning" if quiet else "info", index_source=index_source)
