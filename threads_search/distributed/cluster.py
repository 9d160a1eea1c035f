"""Connecting to a Ray cluster: `--ray ADDRESS`, `--ray auto` (the cluster `ray start` runs on
this machine) or `--ray local` (a throw-away cluster inside this process)."""

from __future__ import annotations

from dataclasses import dataclass

from threads_search.errors import ClusterError

INSTALL_HINT = "install the extra: pip install -c constraints.txt 'threads-search[ray]'"


def require_ray():
    """The `ray` module, or a one-line ClusterError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = "auto", num_cpus: int | None = None):
    """The `ray` module, connected: an existing connection is reused (tests, notebooks), else
    `address` ('local' starts a cluster in this process with `num_cpus`). Ray's own logging is
    kept to warnings; Ray Data's progress bars are off (the caller reports items done)."""
    ray = require_ray()
    if not ray.is_initialized():
        import logging

        try:
            if address in (None, "local"):
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(f"--ray {address}: cannot reach a Ray cluster ({str(error).splitlines()[0]}); "
                               f"start one with `ray start --head` or use --ray local") from None
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide: `address` ('auto', 'local', or host:port); `workers` actors, each with
    `num_cpus` CPUs and `num_gpus` GPUs (the model goes to CUDA when it has one)."""

    address: str | None = "auto"
    workers: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def checked(self) -> "RayConfig":
        """Self, or a one-line error: bad counts (InputError), Ray not installed (ClusterError)."""
        from threads_search.errors import InputError

        require_ray()
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be at least 1")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise InputError(f"--num-cpus {self.num_cpus} / --num-gpus {self.num_gpus}: expected > 0 CPUs and >= 0 GPUs")
        return self


def cancel_and_reraise(ray, pending, error: Exception) -> None:
    """Cancel the tasks still `pending`, then raise: the user-facing error a task raised (Ray wraps
    it in a RayTaskError whose `cause` it is), as one line, else `error` itself."""
    from threads_search.errors import ThreadsSearchError

    for reference in pending:
        ray.cancel(reference)
    cause = getattr(error, "cause", None)
    if isinstance(cause, ThreadsSearchError):
        raise cause from None
    raise error
