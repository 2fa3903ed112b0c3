"""The summaries file: node summaries as columns, in blocks of rows (docs/design.md §14.1).

``index/summaries-{generation}.json`` is a series of blocks of at most :data:`ROWS` summaries.
A block is a header line ``{"rows": n, "groups": [...], "columns": [...], "dropped": [...]}``,
the JSON list of its n paths, then one line per column: the JSON list of its n values.  A field
is a column of its own name; a dict field (``params``, ``metrics``, ``tags``, ``config``: a
*group*) is one column ``{group}.{name}`` per name, null where a summary lacks it (field names
hold no dot).  ``dropped`` (optional) lists rows superseded by later blocks, or gone.

:class:`Table` parses a column when it is first asked for.  Compaction (:func:`write`) parses
only each block's paths: a block with changed paths is copied with them added to ``dropped``,
new summaries go into new blocks, and a block less than half alive is parsed and its live rows
moved; it holds a few blocks in memory, never every summary.  Runs' own entries (runs without
node records) have blocks of their own.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Container, Iterable, Iterator
from typing import IO, Any

from ...errors import StoreError
from ..records import dumps, loads

#: Rows per block: compaction parses the blocks less than half alive, a listing skips
#: a block none of whose rows it lists after parsing its paths.
ROWS = 10_000

Summary = dict[str, Any]


def _dumps(values: Any) -> bytes:
    return dumps(values, separators=(",", ":"), default=str).encode()


class Block:
    """One block as read: its header's fields, and its lines (each ending in a newline),
    parsed when asked for."""

    def __init__(self, head: dict[str, Any], lines: list[bytes]) -> None:
        self.head = head
        self.rows: int = head["rows"]
        self.groups: list[str] = head["groups"]
        self.dropped: list[int] = head.get("dropped", [])
        self.raw = lines  # the header, the paths, then each column
        self.lines = dict(zip(head["columns"], lines[2:], strict=True))
        self._paths: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        """Every row's path, dropped rows' too."""
        if self._paths is None:
            self._paths = self._parse(self.raw[1])
        return self._paths

    def live(self, changed: Container[str] = (), skip: Callable[[str], bool] | None = None
             ) -> list[int] | None:
        """The rows not dropped, but those of paths in ``changed`` or that ``skip``
        names; None for every row."""
        if not changed and skip is None and not self.dropped:
            return None
        dropped = set(self.dropped)
        return [i for i, p in enumerate(self.paths) if i not in dropped
                and p not in changed and (skip is None or not skip(p))]

    def values(self, column: str) -> list[Any]:
        return self._parse(self.lines[column])

    def _parse(self, line: bytes) -> list[Any]:
        values = loads(line)
        if not isinstance(values, list) or len(values) != self.rows:
            raise ValueError(f"a column of {self.rows} rows holds {line[:100]!r}")
        return values

    def text(self, dropped: list[int] | None = None) -> bytes:
        """The block as it was read, to be copied; with ``dropped`` in its header."""
        if dropped is None or dropped == self.dropped:
            return b"".join(self.raw)
        return _dumps(dict(self.head, dropped=dropped)) + b"\n" + b"".join(self.raw[1:])

    def summaries(self, rows: list[int]) -> list[Summary]:
        """Rows made into summary dicts again."""
        columns = {c: self.values(c) for c in self.lines}
        out = []
        for i in rows:
            summary: Summary = {g: {} for g in self.groups}
            for column, values in columns.items():
                group, dot, name = column.partition(".")
                if not dot:
                    if values[i] is not None or column not in summary:  # not a group's
                        summary[column] = values[i]
                elif values[i] is not None:
                    summary.setdefault(group, {})[name] = values[i]
            out.append(summary)
        return out


def blocks(f: IO[bytes]) -> Iterator[Block]:
    """The blocks of an open summaries file, one at a time (ValueError when torn)."""
    while header := f.readline():
        try:
            head = json.loads(header)
            columns = len(head["columns"])
            if not (isinstance(head["rows"], int) and isinstance(head["groups"], list)
                    and isinstance(head.get("dropped", []), list)):
                raise TypeError("rows, groups or dropped")
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"not a block header: {header[:100]!r} ({err})") from None
        lines = [header, *(f.readline() for _ in range(columns + 1))]
        if not all(line.endswith(b"\n") for line in lines):
            raise ValueError("a block cut short (a torn file)")
        yield Block(head, lines)


def _value(summary: Summary, column: str) -> Any:
    group, dot, name = column.partition(".")
    if not dot:
        value = summary.get(column)
        return None if isinstance(value, dict) else value
    inner = summary.get(group)
    return inner.get(name) if isinstance(inner, dict) else None


class Rows:
    """Rows in columns on their way into blocks: paths, group names, a list per column."""

    def __init__(self, paths: list[str], groups: Iterable[str],
                 columns: dict[str, list[Any]]) -> None:
        self.paths = paths
        self.groups = dict.fromkeys(groups)
        self.columns = columns

    @classmethod
    def of_summaries(cls, rows: list[tuple[str, Summary]]) -> Rows:
        # One pass, each value put in its place (a lookup per column and row cost
        # four times as much: it was most of a rebuild's writing).
        fields: dict[str, list[Any]] = {}
        groups: dict[str, dict[str, list[Any]]] = {}
        for i, (_, summary) in enumerate(rows):
            for field, value in summary.items():
                if isinstance(value, dict):
                    group = groups.get(field)
                    if group is None:
                        group = groups[field] = {}
                    for name, v in value.items():
                        column = group.get(name)
                        if column is None:
                            column = group[name] = [None] * len(rows)
                        column[i] = v
                else:
                    column = fields.get(field)
                    if column is None:
                        column = fields[field] = [None] * len(rows)
                    column[i] = value
        for field in [*fields, *groups]:
            if "." in field:
                raise ValueError(f"summary field {field!r}: a field's name holds no dot")
        fields.update((f"{g}.{name}", column) for g, group in groups.items()
                      for name, column in group.items())
        return cls([p for p, _ in rows], groups, fields)

    @classmethod
    def of_block(cls, block: Block, rows: list[int]) -> Rows:
        return Rows(block.paths, block.groups,
                    {c: block.values(c) for c in block.lines}).take(rows)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: list[int]) -> Rows:
        return Rows([self.paths[i] for i in rows], self.groups,
                    {c: [values[i] for i in rows] for c, values in self.columns.items()})

    def extend(self, other: Rows) -> None:
        before, added = len(self.paths), len(other.paths)
        for name in other.columns:
            if name not in self.columns:
                self.columns[name] = [None] * before
        for name, values in self.columns.items():
            values.extend(other.columns[name] if name in other.columns else [None] * added)
        self.paths.extend(other.paths)
        self.groups.update(other.groups)

    def encode(self) -> bytes:
        """One block (see the module's docstring); group columns all null left out."""
        columns = {c: v for c, v in self.columns.items()
                   if "." not in c or any(x is not None for x in v)}
        head = {"rows": len(self.paths), "groups": list(self.groups), "columns": list(columns)}
        lines = [_dumps(head), _dumps(self.paths), *map(_dumps, columns.values())]
        return b"\n".join(lines) + b"\n"


class Writer:
    """Writes blocks to ``out``: blocks copied, and rows gathered into new blocks of
    :data:`ROWS`, each sorted by path (runs' rows, which ``is_run`` names, in blocks
    of their own)."""

    def __init__(self, out: IO[bytes], is_run: Callable[[str], bool]) -> None:
        self.out = out
        self.is_run = is_run
        self.pending = {False: Rows([], [], {}), True: Rows([], [], {})}

    def copy(self, block: Block, dropped: list[int]) -> None:
        self.out.write(block.text(dropped))

    def add(self, rows: Rows) -> None:
        kinds = [self.is_run(p) for p in rows.paths]
        for kind, pending in self.pending.items():
            if kind in kinds:
                pending.extend(rows if all(k == kind for k in kinds) else
                               rows.take([i for i, k in enumerate(kinds) if k == kind]))
                if len(pending) >= ROWS:
                    self.pending[kind] = self._flush(pending)

    def close(self) -> None:
        for pending in self.pending.values():
            self._flush(pending, everything=True)

    def _flush(self, rows: Rows, everything: bool = False) -> Rows:
        """Write ``rows`` in blocks of ROWS, sorted; what is left for a block to come."""
        order = sorted(range(len(rows)), key=rows.paths.__getitem__)
        cut = len(order) if everything else len(order) // ROWS * ROWS
        for start in range(0, cut, ROWS):
            self.out.write(rows.take(order[start:min(start + ROWS, cut)]).encode())
        return rows.take(order[cut:])


def write(old: IO[bytes] | None, out: IO[bytes], changed: dict[str, Summary],
          is_run: Callable[[str], bool]) -> None:
    """The summaries of a new snapshot: ``old``'s, those of paths in ``changed``
    replaced (an empty summary: dropped), then ``changed``'s new paths.

    A block of ``old`` at least half alive is copied, its rows whose paths
    changed added to its ``dropped``; the live rows of the others go into new
    blocks with ``changed``'s summaries (see the module's docstring).
    """
    writer = Writer(out, is_run)
    for block in blocks(old) if old is not None else ():
        dropped = set(block.dropped)
        dropped.update(i for i, p in enumerate(block.paths) if p in changed)
        if block.rows - len(dropped) >= ROWS // 2:
            writer.copy(block, sorted(dropped))
        elif len(dropped) < block.rows:
            writer.add(Rows.of_block(block, [i for i in range(block.rows) if i not in dropped]))
    writer.add(Rows.of_summaries([(p, s) for p, s in changed.items() if s]))
    writer.close()


class Table:
    """Summaries as columns: the rows ``keep`` leaves of each block (None: all; never a
    dropped one), then ``extra`` (path, summary) rows.  A column is parsed when first
    asked for; a column a row does not have is None there."""

    def __init__(self, blocks: list[tuple[Block, list[int] | None]],
                 extra: list[tuple[str, Summary]], source: str = "") -> None:
        self.blocks = blocks
        self.extra = extra
        self.source = source  # the file the blocks were read from, for errors
        self.columns: dict[str, list[Any]] = {}

    @classmethod
    def of(cls, rows: Iterable[tuple[str, Summary]]) -> Table:
        """A table of (path, summary) rows made in memory."""
        return cls([], list(rows))

    def names(self) -> list[str]:
        """Every column some row has (but the paths), in the order first seen."""
        found: dict[str, None] = {}
        for block, _ in self.blocks:
            found.update(dict.fromkeys(block.lines))
        for _, summary in self.extra:
            for field, value in summary.items():
                if isinstance(value, dict):
                    found.update((f"{field}.{name}", None) for name in value)
                else:
                    found[field] = None
        return list(found)

    def groups(self) -> list[str]:
        found: dict[str, None] = {}
        for block, _ in self.blocks:
            found.update(dict.fromkeys(block.groups))
        for _, summary in self.extra:
            found.update((f, None) for f, v in summary.items() if isinstance(v, dict))
        return list(found)

    def paths(self) -> list[str]:
        return self._column(None)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` (a field, or ``group.name``), one per row."""
        found = self.columns.get(name)
        if found is None:
            try:
                found = self.columns[name] = self._column(name)
            except ValueError as err:  # its lines were checked when read, not parsed
                raise self._damaged(err) from None
        return found

    def _column(self, name: str | None) -> list[Any]:
        out: list[Any] = []
        for block, keep in self.blocks:
            if name is not None and name not in block.lines:
                out.extend([None] * (block.rows if keep is None else len(keep)))
                continue
            values = block.paths if name is None else block.values(name)
            if keep is None:
                out.extend(values)
            elif keep:
                out.extend(operator.itemgetter(*keep)(values) if len(keep) > 1
                           else [values[keep[0]]])
        if name is None:
            out.extend(p for p, _ in self.extra)
        else:
            out.extend(_value(s, name) for _, s in self.extra)
        return out

    def summaries(self) -> list[Summary]:
        """Every row as a summary dict again, in the table's order."""
        out: list[Summary] = []
        for block, keep in self.blocks:
            try:
                out.extend(block.summaries(list(range(block.rows)) if keep is None else keep))
            except ValueError as err:
                raise self._damaged(err) from None
        out.extend(s for _, s in self.extra)
        return out

    def _damaged(self, err: ValueError) -> StoreError:
        return StoreError(f"the index summaries file {self.source} is damaged ({err}); run "
                          "`dscheduler index rebuild`", path=self.source, why=str(err))
