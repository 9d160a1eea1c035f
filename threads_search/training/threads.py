"""Intra-op torch threads for a block of work (`train --threads N`, the demo)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def using_torch_threads(count: int | None):
    """Run the block with `count` intra-op torch threads (None: leave them), then restore.

    The models' matmuls are small (one slide: (<= 1500, 768) x (768, 128); one training step:
    (16k, 768) x (768, 128)). On the shared 2-core machine this project is measured on, two
    threads made them unpredictable whenever another process held a core, because every
    matmul waited for a descheduled second thread: embedding the demo's 428 slides took 43.6 s
    instead of 2.4 s, the quick demo's training 63 s instead of 3 s, and the no-flag `train`
    on the demo cohort 86 s instead of 38 s. One thread costs little when the machine is quiet
    (full demo 32 s, against 26-33 s with two); benchmarks/bench_cohorts.py measures 1 vs 2.
    """
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
