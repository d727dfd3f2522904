"""YAML for the operator's own documents (the config, the policy annotation): safe, strict, with lines.

A duplicate key is an error (PyYAML silently keeps the last one, so a second `gone:` written lower down would
quietly replace the first), every mapping remembers the line of each of its keys so that a bad value can be
reported where it stands, and every failure is a YamlTextError with the line, never a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


@dataclass(frozen=True, slots=True)
class YamlTextError(Exception):
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class LineDict(dict[Any, Any]):
    """A mapping that knows the line (1-based) each of its keys was written on."""

    lines: dict[Any, int]


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: MappingNode, deep: bool = False) -> LineDict:
    loader.flatten_mapping(node)  # resolves `<<:` merge keys the way SafeLoader does
    mapping = LineDict()
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in mapping:
            raise YamlTextError(
                f"duplicate key {key!r} (first on line {mapping.lines[key]})", key_node.start_mark.line + 1
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 wants a dot in a float; JSON and YAML 1.2 do not. Helm writes 0.0000001 as `1e-07`, which would
# otherwise be read as text and refused.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def yaml_error_text(error: yaml.YAMLError) -> YamlTextError:
    """PyYAML's error as one line with the line number, not its multi-line rendering."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    message = f"{context}: {problem}" if context else str(problem)
    return YamlTextError(message, mark.line + 1 if mark is not None else None)


def load_strict(text: str | bytes) -> Any:
    """The document, with LineDict mappings. Raises YamlTextError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise yaml_error_text(error) from None
    except RecursionError:
        # PyYAML composes nested collections recursively: `[[[[...` deep enough exhausts the stack.
        raise YamlTextError("nested too deeply") from None
