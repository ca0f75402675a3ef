"""The FastAPI application over an open CrossModalStore: limits, one lock around the store, JSON errors.

Every error reaches the client as ``{"error": "<one line>"}`` with a 4xx status naming what to change; an
unexpected failure is a 500 whose details stay in the server's log (no stack trace leaves the process).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from crossgap_qdrant.images import ImageError
from crossgap_qdrant.serve.results import SearchRequestError
from crossgap_qdrant.serve.routes import router
from crossgap_qdrant.serve.service import Service, ServiceError, ServiceLimits
from crossgap_qdrant.store.errors import CollectionNotFoundError, PointNotFoundError, VectorsNotStoredError

logger = logging.getLogger(__name__)

#: What a multipart form adds to the image it carries (boundaries, headers, small fields), allowed on top of
#: the upload limit before a request is refused unread.
FORM_OVERHEAD = 64 * 1024

#: The page's Content-Security-Policy: nothing is loaded from elsewhere, uploads are previewed as blob: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


#: Statuses of the errors the package raises on purpose.
ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (SearchRequestError, 400),
    (ImageError, 400),
    (PointNotFoundError, 404),
    (VectorsNotStoredError, 409),
    (CollectionNotFoundError, 409),
)


def create_app(store: Any, *, limits: ServiceLimits | None = None) -> FastAPI:
    """The web service over ``store``, an open :class:`~crossgap_qdrant.store.CrossModalStore` (the caller
    keeps ownership: closing it is the caller's).

    Args:
        store: the store searched; its model stays loaded for the service's lifetime.
        limits: request limits (default :class:`ServiceLimits`).

    Returns:
        The FastAPI application: ``/`` (the page), ``/api/search``, ``/api/info``, ``/thumb/POINT_ID``.
    """
    app = FastAPI(title="crossgap-qdrant", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = Service(store, limits or ServiceLimits())
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(resources.files("crossgap_qdrant.serve") / "static")),
              name="static")
    app.add_middleware(UploadLimit, limit=app.state.service.limits.max_upload_bytes + FORM_OVERHEAD)
    app.middleware("http")(_security_headers)
    _add_error_handlers(app)
    return app


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ServiceError):
            return error_response(exc.status, str(exc))
        status = next(s for cls, s in ERROR_STATUS if isinstance(exc, cls))
        return error_response(status, str(exc).strip() or type(exc).__name__)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()]
        return error_response(400, "; ".join(problems) or "invalid request")

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such address: {request.url.path[:200]} (the page is /, the API /api/search and /api/info)"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    app.add_exception_handler(ServiceError, refused)
    for cls, _ in ERROR_STATUS:
        app.add_exception_handler(cls, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


async def _security_headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


class UploadLimit:
    """Refuses request bodies over ``limit`` bytes: by their Content-Length before reading them, else (chunked
    bodies) as soon as more arrives, so an upload is never buffered past the limit."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = error_response(413, self.message())
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ServiceError(self.message(), 413)
            return message

        return await self.app(scope, limited_receive, send)

    def message(self) -> str:
        upload = self.limit - FORM_OVERHEAD
        return (f"the upload is larger than the service's limit of {upload} bytes ({upload / 2**20:.1f} MiB); send "
                "a smaller image, or start the service with a larger --max-upload-mb")
