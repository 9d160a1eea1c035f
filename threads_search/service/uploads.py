"""Uploaded query files: size-limited, stored under a private temporary folder, read by the ingest readers.

A multipart form with `file` (the feature file or expression table), `kind` (`features` |
`expression`), optional `sample` (the row of a multi-sample expression table) and `options`
(the JSON of the search settings). The request must declare its size (Content-Length) and stay
within `--max-upload`; the file keeps only a cleaned stem and a known suffix of the client's
name, so nothing the client sends becomes a path.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from threads_search.atlas.layout import safe_file_name
from threads_search.errors import InputError
from threads_search.service.http_errors import LengthRequiredError, UploadTooLargeError

UPLOAD_SUFFIXES = {"features": (".h5", ".hdf5", ".pt"), "expression": (".csv", ".tsv", ".txt", ".parquet", ".h5ad")}
FORM_OVERHEAD_BYTES = 64 * 2**10  # multipart boundaries and the small fields
MAX_FIELD_BYTES = 64 * 2**10
COPY_CHUNK_BYTES = 2**20


@dataclass
class Upload:
    """A received upload: `path` lies in `folder`, which `discard()` removes."""

    kind: str
    path: Path
    name: str
    sample: str | None
    options_json: str
    folder: Path

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _declared_length(headers, max_bytes: int) -> int:
    text = headers.get("content-length")
    if text is None:
        raise LengthRequiredError("upload: the request must declare its size (Content-Length); chunked uploads are refused")
    try:
        length = int(text)
    except ValueError:
        raise InputError(f"upload: Content-Length '{text[:40]}' is not a number") from None
    if length > max_bytes + FORM_OVERHEAD_BYTES:
        raise UploadTooLargeError(f"upload of {length:,} bytes exceeds the server's limit of {max_bytes:,} bytes "
                                  f"(serve --max-upload)")
    return length


def _stored_name(kind: str, client_name: str) -> str:
    suffixes = UPLOAD_SUFFIXES[kind]
    suffix = Path(client_name).suffix.lower()
    if suffix not in suffixes:
        raise InputError(f"upload '{client_name[:200]}': expected a {kind} file ({', '.join(suffixes)})")
    stem = safe_file_name(Path(client_name).stem)[:120].lstrip(".") or "upload"
    return stem + suffix


async def receive_upload(request, max_bytes: int) -> Upload:
    """Parse and store the upload of `request`; refuses (411/413/400) before reading too much."""
    _declared_length(request.headers, max_bytes)
    form = await request.form(max_files=1, max_fields=8, max_part_size=MAX_FIELD_BYTES)
    try:
        kind = str(form.get("kind") or "")
        if kind not in UPLOAD_SUFFIXES:
            raise InputError(f"upload: kind '{kind[:40]}' is not one of {', '.join(UPLOAD_SUFFIXES)}")
        sent = form.get("file")
        if sent is None or isinstance(sent, str) or not getattr(sent, "filename", None):
            raise InputError("upload: no file in the form field 'file'")
        folder = Path(tempfile.mkdtemp(prefix="threads-search-upload-"))
        path = folder / _stored_name(kind, sent.filename)
        try:
            written = 0
            with open(path, "wb") as handle:
                while chunk := await sent.read(COPY_CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise UploadTooLargeError(f"upload '{sent.filename[:200]}' exceeds the server's limit of "
                                                  f"{max_bytes:,} bytes (serve --max-upload)")
                    handle.write(chunk)
            if written == 0:
                raise InputError(f"upload '{sent.filename[:200]}': empty file")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        sample = form.get("sample")
        return Upload(kind=kind, path=path, name=sent.filename[:200], sample=str(sample) if sample else None,
                      options_json=str(form.get("options") or "{}"), folder=folder)
    finally:
        await form.close()
