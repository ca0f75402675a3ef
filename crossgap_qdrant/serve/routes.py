"""The service's routes: the page, the JSON API and the thumbnails of stored images.

``GET /api/search`` takes ``text`` (a text query) or ``id`` (a stored point); ``POST /api/search`` a multipart
form whose ``image`` field is the query image. Both take, in the query string, ``gallery`` (images or texts),
``mode`` (same-modality searches; default the collection's recorded mode), ``limit``, ``hubness`` (true or
false; default as recorded) and ``filter`` (see :mod:`crossgap_qdrant.serve.filters`). The answer names the
mode that ran, what the scores are (cosine, cosine - hubness, or rrf), whether the query was left out of its
own results, and the hits with their payloads and thumbnail addresses.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from crossgap_qdrant.images import ImageError
from crossgap_qdrant.serve.filters import parse_filter
from crossgap_qdrant.serve.results import GALLERIES, Hit, ImageQuery, SearchResult, compare_mode, modes_for, run_search
from crossgap_qdrant.serve.service import Service, ServiceError
from crossgap_qdrant.serve.thumbnails import THUMB_MEDIA_TYPE, file_thumbnail
from crossgap_qdrant.store.ids import normalize_point_id

router = APIRouter()

#: How long browsers may keep a thumbnail without asking again (a stored point's content never changes).
THUMB_MAX_AGE = 24 * 3600

Filters = Annotated[list[str] | None, Query(description="KEY:VALUE or a JSON object; repeat for AND")]


@router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    html = (resources.files("crossgap_qdrant.serve") / "static" / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/api/info")
def info(request: Request) -> dict[str, Any]:
    """The collection, its model, point counts, the modes each gallery accepts and the limits."""
    service = _service(request)
    store = service.store
    with service.lock:
        described = store.info()
        counts = {"images": store.count("image"), "texts": store.count("text")}
        modes = {g: list(modes_for(store, g[:-1], g)) for g in GALLERIES}
        defaults = {g: store.default_mode(g[:-1]) for g in GALLERIES}
        compare = {g: compare_mode(store, g) for g in GALLERIES}
    limits = service.limits
    return {
        **{k: described[k] for k in ("collection", "engine", "model", "model_id", "embed_dim", "points")},
        "counts": counts,
        "modes": modes,
        "default_modes": defaults,
        "compare_modes": compare,
        "derived_vectors": sorted(described.get("derived_vectors") or {}),
        "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                   "max_limit": limits.max_limit},
    }


@router.get("/api/search")
def search(request: Request, text: str | None = None, id: str | None = None, mode: str | None = None,
           limit: int = 10, gallery: str = "images", filter: Filters = None,
           hubness: bool | None = None) -> dict[str, Any]:
    """Searches by ``text`` or by a stored point's ``id``."""
    if (text is None) == (id is None):
        raise ServiceError("give text=... or id=... (or POST an image to /api/search)")
    service = _service(request)
    query_filter = parse_filter(filter)
    _check_limit(service, limit)
    with service.lock:
        result = run_search(service.store, text=text, point_id=_point_id(id) if id is not None else None,
                            gallery=gallery, mode=mode, limit=limit, query_filter=query_filter, hubness=hubness)
    return _answer(result)


@router.post("/api/search")
async def search_upload(request: Request, mode: str | None = None, limit: int = 10, gallery: str = "images",
                        filter: Filters = None, hubness: bool | None = None) -> dict[str, Any]:
    """Searches by an uploaded image (multipart form field ``image``)."""
    service = _service(request)
    query_filter = parse_filter(filter)
    _check_limit(service, limit)
    data, name = await _upload(request, service.limits.max_upload_bytes)

    def decode_and_search() -> SearchResult:
        store = service.store
        image = ImageQuery.from_bytes(data, name, max_pixels=service.limits.max_pixels,
                                      background=store.encoder.image_background)
        with service.lock:
            return run_search(store, image=image, gallery=gallery, mode=mode, limit=limit, query_filter=query_filter,
                              hubness=hubness)

    return _answer(await run_in_threadpool(decode_and_search))


@router.get("/thumb/{point_id}")
def thumb(request: Request, point_id: str) -> Response:
    """The thumbnail of a stored image, made from the source file the store recorded for it."""
    service = _service(request)
    pid = _point_id(point_id)
    with service.lock:
        records = service.store.collection.retrieve([pid], with_payload=True)
    if not records:
        raise ServiceError(f"point {point_id} is not in the collection", 404)
    payload = records[0].payload or {}
    source = payload.get("source")
    if payload.get("modality") != "image" or not isinstance(source, str) or not source:
        raise ServiceError(f"point {point_id} is not an image with a stored source file: it has no thumbnail", 404)
    tag = f'"{str(payload.get("content_sha256", point_id)).rsplit(":", 1)[-1][:32]}-{service.limits.thumb_size}"'
    headers = {"Cache-Control": f"public, max-age={THUMB_MAX_AGE}", "ETag": tag}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    try:
        data = file_thumbnail(source, service.limits.thumb_size)
    except ImageError as exc:
        raise ServiceError(f"point {point_id}: its source file cannot be read any more ({exc})", 404) from None
    return Response(data, media_type=THUMB_MEDIA_TYPE, headers=headers)


def _service(request: Request) -> Service:
    return request.app.state.service


def _check_limit(service: Service, limit: int) -> None:
    if not 1 <= limit <= service.limits.max_limit:
        raise ServiceError(f"limit must be between 1 and {service.limits.max_limit}, got {limit}")


def _point_id(text: str) -> int | str:
    """A point id from a URL: digits are an integer id, anything else must be a UUID."""
    try:
        return normalize_point_id(int(text) if text.isdigit() else text)
    except ValueError:
        raise ServiceError(f"{text[:80]!r} is not a point id (an unsigned integer or a UUID)") from None


async def _upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The bytes and file name of the form's ``image`` field; 4xx errors for anything else."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (HTTPException, MultiPartException) as exc:  # how Starlette reports a malformed body
        detail = getattr(exc, "detail", None) or getattr(exc, "message", "")
        raise ServiceError(f"the request is not a readable multipart form ({detail}); POST the image as a "
                           "multipart form field named 'image'") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ServiceError("POST the query image as a multipart form field named 'image' (a file)")
        data = await upload.read(max_bytes + 1)
        name = upload.filename or "uploaded image"
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise ServiceError(f"the upload is larger than the service's limit of {max_bytes} bytes", 413)
    if not data:
        raise ServiceError("the uploaded file is empty", 400)
    return data, name


def _answer(result: SearchResult) -> dict[str, Any]:
    def thumbnail_url(hit: Hit) -> str | None:
        return f"/thumb/{hit.id}" if hit.modality == "image" and hit.payload.get("source") else None

    return result.to_dict(thumbnail_url)
