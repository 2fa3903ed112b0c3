"""The summaries file: node summaries as columns, in blocks of rows.

``index/summaries-{generation}.json`` is a series of blocks of at most
:data:`ROWS` summaries each.  A block is a header line
``{"rows": n, "groups": [...], "columns": [...]}``, then the JSON list of its
n paths, then one line per column: the JSON list of that column's n values.
A summary's field is a column of its own name; a field holding a dict
(``params``, ``metrics``, ``tags``, ``config``: a *group*) is one column
``{group}.{name}`` per name in it, null where a summary has no such name (so
a null in a group and a missing name are one; field names hold no dot).

Why columns: parsing lists of scalars makes no dict per node (making 100,000
dicts was most of the cost of listing 100,000 runs), pandas takes lists as
columns directly, and a listing parses only the columns it shows
(:class:`Table` parses a column when it is first asked for).  Why blocks:
compaction (:func:`write`) parses only the paths of a block, and copies a
block none of whose paths changed as it is, so it holds a few blocks in
memory, not every summary of a large store.  The summaries of runs' own
entries (a run without node records) go in blocks of their own: a listing
skips them once their runs have nodes, without parsing more than their paths.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from ...errors import StoreError

#: Rows per block: compaction rewrites the blocks whose paths changed, so a block
#: is what one changed summary costs it to parse and write again.
ROWS = 10_000

Summary = dict[str, Any]


def _dumps(values: list[Any]) -> bytes:
    return json.dumps(values, separators=(",", ":"), default=str).encode()


class Block:
    """One block as read: its header's fields, and its lines (each ending in a newline),
    parsed when asked for."""

    def __init__(self, rows: int, groups: list[str], columns: list[str],
                 lines: list[bytes]) -> None:
        self.rows = rows
        self.groups = groups
        self.raw = lines  # the header, the paths, then each column
        self.lines = dict(zip(columns, lines[2:], strict=True))
        self._paths: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            self._paths = self._parse(self.raw[1])
        return self._paths

    def values(self, column: str) -> list[Any]:
        return self._parse(self.lines[column])

    def _parse(self, line: bytes) -> list[Any]:
        values = json.loads(line)
        if not isinstance(values, list) or len(values) != self.rows:
            raise ValueError(f"a column of {self.rows} rows holds {line[:100]!r}")
        return values

    def text(self) -> bytes:
        """The block as it was read, to be copied as it is."""
        return b"".join(self.raw)

    def summaries(self) -> Iterator[tuple[str, Summary]]:
        """(path, summary) of each row: the block made into dicts again."""
        columns = {c: self.values(c) for c in self.lines}
        for i, path in enumerate(self.paths):
            summary: Summary = {g: {} for g in self.groups}
            for column, values in columns.items():
                group, dot, name = column.partition(".")
                if not dot:
                    summary[column] = values[i]
                elif values[i] is not None:
                    summary[group][name] = values[i]
            yield path, summary


def blocks(f: IO[bytes]) -> Iterator[Block]:
    """The blocks of an open summaries file, one at a time (ValueError when torn)."""
    while header := f.readline():
        try:
            head = json.loads(header)
            rows, groups, names = int(head["rows"]), list(head["groups"]), list(head["columns"])
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"not a block header: {header[:100]!r} ({err})") from None
        lines = [header, *(f.readline() for _ in range(len(names) + 1))]
        if not all(line.endswith(b"\n") for line in lines):
            raise ValueError("a block cut short (a torn file)")
        yield Block(rows, groups, names, lines)


def encode(rows: list[tuple[str, Summary]]) -> bytes:
    """One block of ``rows``, (path, summary) each (see the module's docstring)."""
    columns: dict[str, None] = {}  # in the order first seen
    groups: dict[str, None] = {}
    for _, summary in rows:
        for field, value in summary.items():
            if "." in field:
                raise ValueError(f"summary field {field!r}: a field's name holds no dot")
            if isinstance(value, dict):
                groups[field] = None
                columns.update((f"{field}.{name}", None) for name in value)
            else:
                columns[field] = None
    header = {"rows": len(rows), "groups": list(groups), "columns": list(columns)}
    lines = [json.dumps(header, separators=(",", ":")).encode(), _dumps([p for p, _ in rows])]
    for column in columns:
        lines.append(_dumps([_value(s, column) for _, s in rows]))
    return b"\n".join(lines) + b"\n"


def _value(summary: Summary, column: str) -> Any:
    group, dot, name = column.partition(".")
    if not dot:
        value = summary.get(column)
        return None if isinstance(value, dict) else value
    inner = summary.get(group)
    return inner.get(name) if isinstance(inner, dict) else None


class Writer:
    """Writes blocks to ``out``: blocks copied as they are, and rows gathered into
    blocks of :data:`ROWS` (runs' rows, which ``is_run`` names, apart)."""

    def __init__(self, out: IO[bytes], is_run: Callable[[str], bool]) -> None:
        self.out = out
        self.is_run = is_run
        self.pending: dict[bool, list[tuple[str, Summary]]] = {False: [], True: []}

    def copy(self, block: Block) -> None:
        self.out.write(block.text())

    def add(self, path: str, summary: Summary) -> None:
        rows = self.pending[self.is_run(path)]
        rows.append((path, summary))
        if len(rows) >= ROWS:
            self._flush(rows)

    def close(self) -> None:
        for rows in self.pending.values():
            self._flush(rows)

    def _flush(self, rows: list[tuple[str, Summary]]) -> None:
        if rows:
            rows.sort(key=operator.itemgetter(0))
            self.out.write(encode(rows))
            rows.clear()


def write(old: IO[bytes] | None, out: IO[bytes], changed: dict[str, Summary],
          is_run: Callable[[str], bool]) -> None:
    """The summaries of a new snapshot: ``old``'s, those of paths in ``changed``
    replaced (an empty summary: dropped), then ``changed``'s new paths.

    A block of ``old`` none of whose paths changed is copied as it is, unless it
    is less than half full (then its rows go into new blocks, so that blocks stay
    few); the rows of the others are gathered into new blocks.
    """
    writer = Writer(out, is_run)
    for block in blocks(old) if old is not None else ():
        if block.rows >= ROWS // 2 and not any(p in changed for p in block.paths):
            writer.copy(block)
            continue
        for path, summary in block.summaries():
            if path not in changed:
                writer.add(path, summary)
    for path, summary in changed.items():
        if summary:
            writer.add(path, summary)
    writer.close()


class Table:
    """Summaries as columns: the rows ``keep`` leaves of each block (None: all), then
    ``extra`` (path, summary) rows.  A column is parsed when first asked for; a column
    a row does not have is None there."""

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
                rows = [s for _, s in block.summaries()]
            except ValueError as err:
                raise self._damaged(err) from None
            out.extend(rows if keep is None else [rows[i] for i in keep])
        out.extend(s for _, s in self.extra)
        return out

    def _damaged(self, err: ValueError) -> StoreError:
        return StoreError(f"the index summaries file {self.source} is damaged ({err}); run "
                          "`dscheduler index rebuild`", path=self.source, why=str(err))
