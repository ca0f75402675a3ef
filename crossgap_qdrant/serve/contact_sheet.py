"""A contact sheet: one self-contained HTML page of a search's results, a column per mode, thumbnails embedded
as data URIs (the page opens anywhere, offline, and can be mailed or archived as one file)."""

from __future__ import annotations

import datetime as _dt
import html
import logging
from typing import Callable, Sequence

from crossgap_qdrant.serve.results import Hit, SearchResult, query_what
from crossgap_qdrant.serve.thumbnails import data_uri, file_thumbnail

logger = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; color: #1b1f24; background: #f6f8fa; margin: 0; padding: 1rem 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
.head { display: flex; gap: 1.25rem; align-items: flex-start; margin: 0 0 1rem; }
dl.about { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; font-size: .9rem; }
dl.about dt { color: #57606a; }
dl.about dd { margin: 0; }
img.query { width: 96px; height: 96px; object-fit: contain; background: #fff; border: 1px solid #d0d7de; }
.columns { display: grid; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); gap: 1rem; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: .75rem; }
h2 { font-size: 1rem; margin: 0 0 .5rem; }
h2 span { font-weight: normal; color: #57606a; font-size: .85rem; }
ol { list-style: none; margin: 0; padding: 0; display: grid;
     grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)); gap: .5rem; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px; }
figure img { width: 100%; height: 100px; object-fit: contain; display: block; }
figure blockquote, figure .missing { margin: 0; min-height: 3em; font-size: .85rem; padding: .25rem; }
figure .missing { color: #b3261e; }
figcaption { font-size: .75rem; }
figcaption b { font-variant-numeric: tabular-nums; }
figcaption span { display: block; color: #57606a; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
"""


def stored_thumbnail(hit: Hit) -> str | None:
    """A data URI of the hit's thumbnail from its stored source file; None for texts and unreadable files."""
    source = hit.payload.get("source")
    if hit.modality != "image" or not isinstance(source, str):
        return None
    try:
        return data_uri(file_thumbnail(source))
    except (OSError, ValueError) as exc:  # ImageError is a ValueError: the sheet shows the hit without a picture
        logger.warning("no thumbnail for %s: %s", source, exc)
        return None


def query_thumbnail(result: SearchResult) -> str | None:
    """A data URI of an image query's picture (its file, or a stored point's source); None for texts and
    unreadable files."""
    if result.query_modality != "image" or not result.query_item:
        return None
    try:
        return data_uri(file_thumbnail(result.query_item))
    except (OSError, ValueError) as exc:
        logger.warning("no thumbnail of the query %s: %s", result.query_item, exc)
        return None


def render_contact_sheet(results: Sequence[SearchResult], *, collection: str = "",
                         query_thumbnail: str | None = None,
                         thumbnail: Callable[[Hit], str | None] = stored_thumbnail) -> str:
    """The page of one search, a column per result (mode), best hits first.

    Args:
        results: the same query in one or more modes.
        collection: shown in the page's header.
        query_thumbnail: a data URI of the query image (image queries), shown beside the query.
        thumbnail: a hit's image as a data URI, or None (texts, unreadable files).

    Returns:
        The HTML document; every ``<img>`` is a data URI: nothing is fetched when it opens.
    """
    if not results:
        raise ValueError("a contact sheet needs at least one result")
    first = results[0]
    esc = html.escape
    shown = esc(first.query) + f" <small>({esc(query_what(first))})</small>"
    if first.query_item and first.query_item != first.query:
        shown += f"<br><small>{esc(first.query_item)}</small>"
    about = [("query", shown),
             ("gallery", esc(first.gallery)),
             ("mode" + ("s" if len(results) > 1 else ""), ", ".join(
                 f"{esc(r.mode)} ({esc(r.score_kind)})" for r in results)),
             ("hubness", "on" if any(r.hubness for r in results) else "off"),
             ("query excluded", "yes" if first.query_excluded else "no")]
    if collection:
        about.insert(0, ("collection", esc(collection)))
    about.append(("made", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")))
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(first.query)} - crossgap-qdrant contact sheet</title>", f"<style>{_STYLE}</style>",
             "</head><body>", "<h1>crossgap-qdrant search results</h1>"]
    parts.append('<div class="head">')
    if query_thumbnail:
        parts.append(f'<img class="query" src="{esc(query_thumbnail)}" alt="the query image">')
    parts.append('<dl class="about">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in about) + "</dl></div>")
    parts.append(f'<div class="columns" style="--n: {len(results)}">')
    for result in results:
        parts.append(f'<section><h2>{esc(result.mode)} <span>{esc(result.score_kind)}, '
                     f'{len(result.hits)} hit{"s" if len(result.hits) != 1 else ""}</span></h2><ol>')
        parts += [_figure(hit, thumbnail(hit)) for hit in result.hits]
        parts.append("</ol></section>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _figure(hit: Hit, uri: str | None) -> str:
    esc = html.escape
    name = esc(hit.label)
    if uri is not None:
        body = f'<img class="hit" src="{esc(uri)}" alt="{name}">'
    elif hit.modality == "text":
        body = f"<blockquote>{esc(hit.item)}</blockquote>"
    else:
        body = f'<p class="missing">image not readable: {esc(hit.item)}</p>'
    return (f'<li><figure>{body}<figcaption>{hit.rank}. <b>{hit.score:.4f}</b>'
            f'<span title="{esc(hit.item)}">{name}</span></figcaption></figure></li>')
