"""Every refusal as an HTTP status and a one-line `{"detail": ...}`, the same line the CLI prints."""

from __future__ import annotations

import hmac

from threads_search.errors import (AtlasError, DeviceError, IndexFileError, InputError, ModelMismatchError,
                                   ThreadsSearchError)


class NotFoundError(ThreadsSearchError):
    """An item id, image or report the service does not have."""


class UploadTooLargeError(ThreadsSearchError):
    """An upload beyond `--max-upload`."""


class LengthRequiredError(ThreadsSearchError):
    """An upload without a Content-Length header (its size must be known before it is read)."""


class TokenError(ThreadsSearchError):
    """A request without the bearer token the service requires."""


# The most specific class first: `status_of` takes the first match.
_STATUS = ((NotFoundError, 404), (UploadTooLargeError, 413), (LengthRequiredError, 411), (TokenError, 401),
           (ModelMismatchError, 422), (AtlasError, 409), (IndexFileError, 503), (DeviceError, 400), (InputError, 400))


def status_of(error: ThreadsSearchError) -> int:
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 400)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def validation_line(errors: list[dict]) -> str:
    """FastAPI's list of validation errors as one line: 'body.k: Input should be ...; ...'."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
    return one_line("; ".join(parts) or "invalid request")


def install_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ThreadsSearchError)
    async def _threads_search_error(request, error: ThreadsSearchError):
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, TokenError) else None
        return JSONResponse({"detail": one_line(str(error))}, status_code=status_of(error), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, error: RequestValidationError):
        return JSONResponse({"detail": validation_line(error.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error: HTTPException):
        return JSONResponse({"detail": one_line(str(error.detail))}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Refuse unless `authorization` is 'Bearer <token>' (constant-time compare); a no-op without a token."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise TokenError("missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN' "
                         "(the page asks for the token once)")
