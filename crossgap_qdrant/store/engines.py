"""Which engine serves a location, and opening a collection on it.

    a folder                    qdrant-edge (Qdrant's Rust engine in the process): the default
    a folder, engine="local"    qdrant-client's local mode (pure Python, SQLite; small collections only)
    an existing folder          the engine that wrote it (another engine asked for is refused)
    ":memory:"                  qdrant-client's in-memory mode
    "http(s)://host:port"       a Qdrant server or cluster through qdrant-client
    client=QdrantClient(...)    the caller's own client (never closed here)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client.local.qdrant_local import QdrantLocal

from crossgap_qdrant.store.client_engine import ClientCollection
from crossgap_qdrant.store.collection import Collection
from crossgap_qdrant.store.connection import ENGINES, RetryPolicy, call_with_retries, is_server_location, redact
from crossgap_qdrant.store.edge import SHARD_DIR, EdgeCollection
from crossgap_qdrant.store.errors import (
    CollectionNotFoundError,
    CorruptMetadataError,
    InvalidRequestError,
    StoreLockedError,
)

logger = logging.getLogger(__name__)


def engine_for(location: str, engine: str | None = None) -> str:
    """The engine ("edge", "local" or "client") that serves ``location``; raises ValueError on a mismatch."""
    if engine is not None and engine not in ENGINES:
        raise InvalidRequestError(f"engine must be one of {', '.join(ENGINES)} (or None: chosen by the location), "
                                  f"got {engine!r}")
    remote = location == ":memory:" or is_server_location(location)
    if "://" in location and not is_server_location(location):
        raise InvalidRequestError(f"location {redact(location)!r}: only http:// and https:// URLs are Qdrant servers")
    if engine is None:
        return "client" if remote else "edge"
    if remote and engine != "client":
        raise InvalidRequestError(f"engine={engine!r} runs on a folder; {redact(location)!r} is served by "
                                  "qdrant-client "
                                  "(engine='client' or None)")
    if not remote and engine == "client":
        raise InvalidRequestError(f"{location!r} is a folder: use engine='edge' (the default) or engine='local' "
                                  "(qdrant-client local mode)")
    return engine


ENGINE_NAMES = {"edge": "Qdrant's embedded engine (edge)", "local": "qdrant-client's local mode (local)"}


def folder_engine(folder: str) -> str | None:
    """The engine that wrote ``folder``: "local" (qdrant-client's meta.json), "edge" (a collection holding an
    Edge shard), or None (empty, new, or neither)."""
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return "local"
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if any(e.is_dir() and os.path.isfile(os.path.join(e.path, SHARD_DIR, "edge_config.json")) for e in entries):
        return "edge"
    return "local" if os.path.isdir(os.path.join(folder, "collection")) else None


def _client_location(client: QdrantClient) -> tuple[str, bool, str | None]:
    """(location for messages, is a server, local folder) of a caller's client."""
    inner = getattr(client, "_client", None)
    if isinstance(inner, QdrantLocal):
        if inner.persistent:
            return os.path.abspath(inner.location), False, os.path.abspath(inner.location)
        return ":memory:", False, None
    options = getattr(client, "init_options", {}) or {}
    url = options.get("url") or options.get("location") or options.get("host") or "a Qdrant server"
    return redact(str(url)), True, None


def _check_local_meta(folder: str, create_folder: bool) -> None:
    """Local mode writes meta.json in place on first open; a full disk leaves it empty and the folder unopenable.

    An empty meta.json next to no collection data is that interrupted first write: it is removed before
    opening for writing. Anything else unreadable is reported with the file's name.
    """
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return
    try:
        meta = json.loads(text)
        if isinstance(meta, dict) and isinstance(meta.get("collections"), dict):
            return
    except ValueError:
        pass
    collections_dir = os.path.join(folder, "collection")
    has_data = os.path.isdir(collections_dir) and any(os.scandir(collections_dir))
    if not text.strip() and not has_data:
        if not create_folder:
            raise CollectionNotFoundError(
                f"the local Qdrant folder {folder} holds no collection (its meta.json is empty: an interrupted "
                "first write). Ingest into it to start it afresh.")
        logger.warning("removing the empty %s (an interrupted first write; the folder holds no data)", meta_path)
        os.unlink(meta_path)
        return
    raise CorruptMetadataError(
        f"the local Qdrant folder's {meta_path} is damaged (not the JSON qdrant-client writes), so the folder "
        "cannot be opened. Restore it from a backup; the points themselves are in the storage.sqlite files under "
        f"{collections_dir}.")


def _open_local(folder: str, create_folder: bool, client_kwargs: dict[str, Any]) -> QdrantClient:
    _check_local_meta(folder, create_folder)
    try:
        return QdrantClient(path=folder, **client_kwargs)
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise StoreLockedError(
            f"the local Qdrant folder {folder} is already open in another client (in this or another process). "
            "Local mode allows one client per folder: close the other one first (CrossModalStore.close()), or "
            "run a Qdrant server for concurrent access.") from None


def open_collection(location: str | os.PathLike | None, name: str, *, engine: str | None = None,
                    client: QdrantClient | None = None, api_key: str | None = None, timeout: float | None = None,
                    retry: RetryPolicy | None = RetryPolicy(), client_kwargs: dict[str, Any] | None = None,
                    create_folder: bool = False) -> Collection:
    """Opens collection ``name`` at ``location`` on the engine that serves it (nothing is created here).

    Args:
        location: a folder, ":memory:", or "http(s)://[user:password@]host:port"; ignored with ``client``.
        engine: None (by location: a folder -> the engine that wrote it, else "edge"; otherwise "client"),
            "edge", "local" (qdrant-client local mode on a folder) or "client". An engine other than the one
            that wrote an existing folder is refused (InvalidRequestError), before anything is written.
        client: the caller's own QdrantClient (used as is, never closed by the collection).
        api_key, timeout: for servers (timeout: seconds per request).
        retry: retries and the total deadline per operation for servers.
        client_kwargs: passed to QdrantClient (e.g. prefer_grpc=True).
        create_folder: a missing folder is fine (the caller is about to write); False raises
            CollectionNotFoundError for a missing folder, so reads never create one.

    Raises:
        CollectionNotFoundError: the folder does not exist and ``create_folder`` is False.
        StoreLockedError: a local-mode folder is open in another client (Edge reports it on first use).
        ConnectionError: the server did not answer within the retry policy (the message names the
            redacted URL).
        PermissionError: the server refused the credentials.
    """
    client_kwargs = dict(client_kwargs or {})
    if client is not None:
        where, server, folder = _client_location(client)
        return ClientCollection(client, name, location=where, retry=retry, server=server, owns_client=False,
                                folder=folder)
    if location is None:
        raise InvalidRequestError("give a location (a folder, ':memory:' or a server URL) or a QdrantClient")
    location = os.fspath(location)
    chosen = engine_for(location, engine)
    if chosen == "client":
        if location == ":memory:":
            return ClientCollection(QdrantClient(location=":memory:", **client_kwargs), name, location=":memory:",
                                    retry=retry)
        safe = redact(location)
        client_kwargs.setdefault("https", location.startswith("https://"))
        # its version check warns on any unreachable server; call_with_retries below reports that in one line
        client_kwargs.setdefault("check_compatibility", False)
        try:
            built = QdrantClient(url=location, api_key=api_key, timeout=timeout, **client_kwargs)
        except Exception as exc:  # its message quotes the URL, credentials included
            raise InvalidRequestError(f"cannot use the server URL {safe!r} ({type(exc).__name__}); expected "
                                      "http(s)://host:port with a numeric port") from None
        try:
            call_with_retries(f"connect to the Qdrant server at {safe}", built.get_collections, retry)
        except BaseException:
            built.close()
            raise
        return ClientCollection(built, name, location=safe, retry=retry, server=True)
    if api_key is not None:
        raise InvalidRequestError(f"api_key is for Qdrant servers; {location!r} is a local folder")
    folder = os.path.abspath(location)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(f"{folder} is a file, not a Qdrant folder")
        if not create_folder:
            raise CollectionNotFoundError(
                f"there is no Qdrant folder at {folder}: nothing is created by a read. Ingest into it first.")
        os.makedirs(folder, exist_ok=True)
    written_by = folder_engine(folder)
    if written_by is not None and engine is not None and engine != written_by:
        raise InvalidRequestError(
            f"the folder {folder} was written by {ENGINE_NAMES[written_by]}, not {ENGINE_NAMES[engine]}: leave "
            f"out engine (--engine) to open it with the engine that wrote it, or use another folder")
    chosen = written_by or chosen
    if chosen == "edge":
        return EdgeCollection(folder, name)
    return ClientCollection(_open_local(folder, create_folder, client_kwargs), name, location=folder,
                            retry=retry, server=False, folder=folder)
