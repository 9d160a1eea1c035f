"""Typed errors. Every message is one line that names the offending file, row or column.

The CLI turns any `ThreadsSearchError` into that line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ThreadsSearchError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class InputError(ThreadsSearchError):
    """A user file or argument is malformed (names file/row/column)."""


class AtlasError(ThreadsSearchError):
    """The atlas folder is missing, not an atlas, or inconsistent with a request."""


class ModelMismatchError(ThreadsSearchError):
    """An encoder, checkpoint or index does not fit the data it is asked to handle."""


class IndexFileError(ThreadsSearchError):
    """An index file is missing or corrupt; the fix is to rebuild it."""


class DeviceError(ThreadsSearchError):
    """A requested accelerator (CUDA GPU, faiss-gpu) is not available."""


class TrainingError(ThreadsSearchError):
    """Training cannot start or had to stop (too few pairs, NaN loss ...)."""


class AtlasBusyError(AtlasError):
    """Another process is writing the atlas (one writer at a time)."""


class AtlasDamagedError(AtlasError):
    """A file of the atlas is missing, truncated or does not match its record."""


class ClusterError(ThreadsSearchError):
    """Ray is not installed, the cluster cannot be reached, or a shard stayed down after its retries."""
