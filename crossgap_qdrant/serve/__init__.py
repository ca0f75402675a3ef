"""Search results a person can see: the web service (``crossgap-qdrant serve``) and contact sheets.

Modules:
    results         one search as the service and the command line report it (mode, score kind, exclusion)
    thumbnails      small JPEG thumbnails of stored images, as bytes or data URIs
    contact_sheet   a self-contained HTML page of one or more result columns (``search --html``)
    filters         the service's payload filter syntax
    app             ``create_app(store)``: the FastAPI application over an open CrossModalStore
    routes          the JSON API, the thumbnails and the page
    static/         the page (HTML, JS, CSS; no network assets)

Importing this package loads neither FastAPI nor torch; :func:`create_app` is resolved on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from crossgap_qdrant.serve.app import create_app  # noqa: PLC0415 (FastAPI only when the service is made)

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
