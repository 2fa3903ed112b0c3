"""A YAML file read with the line of every value, so that errors can name it.

:func:`read` loads UTF-8 YAML with PyYAML's safe loader (no object tags), refusing a
key given twice in one mapping (PyYAML would keep the last silently).  The
:class:`Source` it returns holds the data and, for each path of keys and list
indices (``("runs", 0, "label")``), the line where that value starts, taken from
the nodes PyYAML composes.  ``source.at(*path)("text")`` is a ConfigError
``"{file}, line {n}: text"`` for the nearest path that has a line, e.g. a
pydantic error's ``loc`` under the entry it validated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


@dataclass
class Source:
    """The data of one YAML file and the line of each value in it."""

    path: Path
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, *where: Any) -> int:
        """The line of the value at ``where``, or of its nearest enclosing value."""
        for n in range(len(where), -1, -1):
            found = self.lines.get(tuple(where[:n]))
            if found is not None:
                return found
        return 1

    def at(self, *where: Any) -> Callable[[str], ConfigError]:
        """A maker of the ConfigError for the value at ``where``: file, line, text."""
        line = self.line(*where)
        return lambda text: ConfigError(f"{self.path}, line {line}: {text}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice (first on line {first}); "
                         "YAML would keep only the last one: merge the two into one")


_BOOL = "tag:yaml.org,2002:bool"


#: PyYAML's safe loader, its C parser when PyYAML has libyaml (the same nodes, with marks).
_SAFE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SAFE):  # type: ignore[misc]
    """PyYAML's safe loader, but a key given twice in one mapping is an error: PyYAML
    keeps the last silently, so a second ``runs:`` would drop the first list.  (Keys a
    ``<<`` merge brings in may be overridden, as YAML intends.)  A key written ``on``,
    ``off``, ``yes`` or ``no`` stays a string: YAML 1.1 makes it a boolean, so ``on:
    base`` would be ``{True: "base"}``."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.tag == _BOOL and key_node.value.lower() not in ("true", "false"):
                key_node.tag = "tag:yaml.org,2002:str"
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class says why it is refused
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def read(path: Path) -> Source:
    """The YAML of ``path`` with its lines: UTF-8, no key twice (ConfigErrors say where)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read experiment {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte {err.start} (line {line}) is "
            f"0x{data[err.start]:02x}; save the file as UTF-8"
        ) from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as err:
        raise ConfigError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _walk(node, (), lines, set())
    return Source(path, value, lines)


def _walk(node: yaml.Node, where: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
          open_nodes: set[int]) -> None:
    """Record the line of ``node`` at ``where`` and of everything under it.  Constructing
    the data first has flattened ``<<`` merges into the mappings' own pairs; an alias that
    contains itself is not followed twice."""
    lines.setdefault(where, node.start_mark.line + 1)
    if id(node) in open_nodes:
        return
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.setdefault((*where, key.value), key.start_mark.line + 1)
                _walk(value, (*where, key.value), lines, open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*where, i), lines, open_nodes)
    open_nodes.discard(id(node))
