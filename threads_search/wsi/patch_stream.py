"""Read patch batches on a background thread so that reading overlaps encoding.

OpenSlide decodes tiles in C through ctypes and PIL resizes in C, both without the GIL, so
one reader thread keeps the encoder fed while torch runs on the main thread. The queue is
bounded: memory stays at `queue_batches` batches whatever the slide size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from threads_search.wsi.reader import Slide
from threads_search.wsi.tiling import TilePlan, read_patch

_DONE = object()


class _ReaderFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _read_batches(slide: Slide, plan: TilePlan, batch_size: int, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for start in range(0, plan.n_patches, batch_size):
            coords = plan.coords[start : start + batch_size]
            patches = np.stack([read_patch(slide, plan, x, y) for x, y in coords])
            while not stop.is_set():
                try:
                    out.put((coords, patches), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_DONE)
    except BaseException as error:  # handed to the consumer, which re-raises it
        out.put(_ReaderFailed(error))


def iter_patch_batches(
    slide: Slide, plan: TilePlan, batch_size: int = 32, queue_batches: int = 3
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (coords (b, 2) int64, patches (b, patch_size, patch_size, 3) uint8) in plan order.

    An error in the reader is re-raised here; leaving the loop early stops the reader.
    """
    batches: queue.Queue = queue.Queue(maxsize=max(1, queue_batches))
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_batches, args=(slide, plan, max(1, batch_size), batches, stop), name="patch-reader", daemon=True
    )
    reader.start()
    try:
        while True:
            item = batches.get()
            if item is _DONE:
                return
            if isinstance(item, _ReaderFailed):
                raise item.error
            yield item
    finally:
        stop.set()
        # Unblock a reader waiting on a full queue, then wait for it so the slide can close.
        while reader.is_alive():
            try:
                batches.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()
