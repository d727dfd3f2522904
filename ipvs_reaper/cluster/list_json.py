"""A Kubernetes List decoded one item at a time.

`json.loads` of a listing holds every item as Python objects at once: for 10,000 EndpointSlices (an 8 MB
answer, and a listing from the API server's watch cache is paginated only in recent releases) that is
several times the answer's size, which the process keeps as its resident size afterwards. Here each item is
decoded and handed on before the next, so only the text and one item are held.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at


def _expect(text: str, at: int, chars: str) -> tuple[str, int]:
    at = _skip(text, at)
    if at >= len(text) or text[at] not in chars:
        found = repr(text[at]) if at < len(text) else "the end"
        raise ValueError(f"expected {' or '.join(repr(c) for c in chars)} at character {at}, found {found}")
    return text[at], at + 1


def decode_list(text: str, on_item: Callable[[Any], None]) -> dict[str, Any]:
    """Calls `on_item` with each element of the top-level object's "items" array, in order, and returns the
    object's other members. Raises ValueError when the text is not a JSON object (or "items" not an array),
    and RecursionError for nesting deeper than the interpreter allows."""
    fields: dict[str, Any] = {}
    _, at = _expect(text, 0, "{")
    if _expect(text, at, '}"')[0] == "}":
        return _end(text, _expect(text, at, "}")[1], fields)
    while True:
        key, at = _DECODER.raw_decode(text, _skip(text, at))
        _, at = _expect(text, at, ":")
        at = _skip(text, at)
        if key == "items" and text.startswith("[", at):
            at = _items(text, at + 1, on_item)
            fields.pop("items", None)
        else:
            fields[key], at = _DECODER.raw_decode(text, at)
        separator, at = _expect(text, at, ",}")
        if separator == "}":
            return _end(text, at, fields)
        _expect(text, at, '"')


def _items(text: str, at: int, on_item: Callable[[Any], None]) -> int:
    if _expect(text, at, ']"{[-0123456789tfn')[0] == "]":
        return _expect(text, at, "]")[1]
    while True:
        item, at = _DECODER.raw_decode(text, _skip(text, at))
        on_item(item)
        separator, at = _expect(text, at, ",]")
        if separator == "]":
            return at


def _end(text: str, at: int, fields: dict[str, Any]) -> dict[str, Any]:
    at = _skip(text, at)
    if at != len(text):
        raise ValueError(f"extra data at character {at}")
    return fields
