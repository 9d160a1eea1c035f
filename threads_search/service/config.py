"""How a `serve` process is set up, checked before anything listens."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from threads_search.errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 512 * 2**20  # a 100k-patch float16 CONCH bag is ~150 MiB
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServiceConfig:
    """`atlas` folder; `host`/`port` to bind; `token` the bearer token every API call must carry
    (required for any host but loopback); `max_upload_bytes` per uploaded query file;
    `reports_dir` a folder of `eval --json` reports to list; `thumbnail_px` the grid's side;
    `max_parallel_searches` how many searches run at once (the rest queue), so a burst of
    clients cannot hold more indexes and query vectors in memory than the machine has cores."""

    atlas: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    reports_dir: Path | None = None
    thumbnail_px: int = 256
    max_parallel_searches: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))

    def checked(self) -> "ServiceConfig":
        """Self, or a one-line InputError: an exposed host without a token, a short token, a bad port."""
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"--host {self.host}: serving beyond this machine needs --token (a bearer token every "
                             f"request must send); or bind --host 127.0.0.1")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise InputError(f"--token: use at least {MIN_TOKEN_LENGTH} characters (e.g. `python -c \"import secrets; "
                             f"print(secrets.token_urlsafe())\"`)")
        if not 0 < self.port < 65536:
            raise InputError(f"--port {self.port}: expected 1-65535")
        if self.max_upload_bytes < 1:
            raise InputError("--max-upload: must be positive")
        if self.reports_dir is not None and not Path(self.reports_dir).is_dir():
            raise InputError(f"--reports {self.reports_dir}: no such folder")
        return self


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; every other name or address counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
