"""The item-at-a-time List decoder agrees with json.loads on every document, and fails where it fails."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvs_reaper.cluster.list_json import decode_list

# Finite floats: Infinity and NaN are not JSON (RFC 8259) and no API server sends them; json.loads takes
# them, the decoder refuses them (test_infinity_is_refused).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
_documents = st.dictionaries(
    st.sampled_from(["kind", "apiVersion", "metadata", "x", "items"]),
    _values,
    max_size=5,
)


def _decoded(text: str) -> tuple[list[Any], dict[str, Any]]:
    items: list[Any] = []
    fields = decode_list(text, items.append)
    return items, fields


@given(_documents, st.booleans())
def test_it_agrees_with_json_loads(document: dict[str, Any], pretty: bool) -> None:
    text = json.dumps(document, indent=1 if pretty else None)
    items, fields = _decoded(text)
    expected = dict(document)
    listed = expected.pop("items", None)
    if isinstance(listed, list):
        assert items == listed and fields == expected
    else:
        assert items == [] and fields == document


def test_infinity_is_refused() -> None:
    with pytest.raises(ValueError, match="at character 11"):
        _decoded('{"items": [Infinity]}')


@given(st.text(max_size=40))
def test_it_fails_where_json_loads_fails(text: str) -> None:
    try:
        document = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            _decoded(text)
        return
    if isinstance(document, dict) and len(text) == len(json.dumps(document)):
        _decoded(text)


@pytest.mark.parametrize(
    "text",
    ['{"items": [1, 2', '{"items": [1,]}', '{"items": []} x', "{,}", '{"a" 1}', '{"items": [1] "b": 2}', ""],
)
def test_truncated_and_malformed_answers_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        _decoded(text)


def test_a_listing_as_the_api_server_writes_it() -> None:
    text = (
        '{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"7",'
        '"continue":"c"},"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}\n'
    )
    items, fields = _decoded(text)
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert fields["metadata"] == {"resourceVersion": "7", "continue": "c"}
