"""The service's payload filter: ``filter`` query parameters turned into a Qdrant filter.

Two forms, each ``filter`` parameter one condition set, all of them required (AND):

* ``filter=KEY:VALUE`` -- the payload field KEY equals the string VALUE (split at the first colon), e.g.
  ``filter=label:cat``;
* ``filter={"KEY": VALUE, ...}`` -- a JSON object; each VALUE a string or an integer (equals), or a list of
  them (any of), e.g. ``filter={"label": ["cat", "dog"], "year": 2020}``.

Booleans and floats are refused: not every engine matches them exactly.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from qdrant_client import models

from crossgap_qdrant.serve.results import SearchRequestError

MAX_KEY_LENGTH = 128
MAX_CONDITIONS = 32


def parse_filter(specs: Sequence[str] | None):
    """A Qdrant ``models.Filter`` of every condition in ``specs`` (None for no specs).

    Raises:
        SearchRequestError: a spec in neither form, or a value of an unsupported type.
    """
    conditions: list[Any] = []
    for spec in specs or ():
        spec = spec.strip()
        if spec.startswith("{"):
            try:
                wanted = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise SearchRequestError(f"filter is not valid JSON ({exc.msg} at character {exc.pos})") from None
            if not isinstance(wanted, dict) or not wanted:
                raise SearchRequestError('a JSON filter is a non-empty object, e.g. {"label": "cat"}')
            pairs = list(wanted.items())
        else:
            key, sep, value = spec.partition(":")
            if not sep:
                raise SearchRequestError(f"filter takes KEY:VALUE or a JSON object, got {spec!r}")
            pairs = [(key.strip(), value)]
        for key, value in pairs:
            conditions.append(models.FieldCondition(key=_checked_key(key), match=_match(key, value)))
    if len(conditions) > MAX_CONDITIONS:
        raise SearchRequestError(f"at most {MAX_CONDITIONS} filter conditions, got {len(conditions)}")
    return models.Filter(must=conditions) if conditions else None


def _checked_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise SearchRequestError(f"a filter key is a payload field name of 1-{MAX_KEY_LENGTH} printable characters, "
                                 f"got {key!r}")
    return key


def _match(key: str, value: Any):
    if isinstance(value, list):
        strings, integers = all(isinstance(v, str) for v in value), all(_plain(v) and not isinstance(v, str)
                                                                        for v in value)
        if not value or not (strings or integers):
            raise SearchRequestError(f"filter {key!r}: a list of values holds only strings or only integers, got "
                                     f"{value!r}")
        return models.MatchAny(any=value)
    if not _plain(value):
        raise SearchRequestError(f"filter {key!r}: a value is a string or an integer (or a list of them), got "
                                 f"{value!r}")
    return models.MatchValue(value=value)


def _plain(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
