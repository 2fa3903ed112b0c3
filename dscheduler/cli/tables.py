"""Tables for people: columns chosen by importance and sized to fit the terminal.

A :class:`Col` holds one column's header and cells as text, its kind (``text``,
``number``, ``id``) and so how it may shrink: ids are short unique prefixes
already, numbers never shrink, text is cut at its end (``…``) down to
``min_width``.  :func:`fit` keeps columns in order of importance while their
minimum widths fit, then widens them towards their natural widths; the columns
left out are named in a footer line.  :func:`render` makes the rich Table with
exactly those widths, so rich never squeezes it (cells are ``Text``: no markup).
CSV and JSON (:func:`to_csv`, :func:`to_json`) stay complete: every column.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rich.table import Table
from rich.text import Text

from ..errors import ConfigError

#: Space between two columns (rich's padding of one on each side, none at the edges).
GAP = 2
#: Text columns (labels excepted) are no wider than this unless --wide.
MAX_TEXT = 40
#: Shortest id prefix shown.
ID_CHARS = 8


def cell(value: Any, digits: int = 4) -> str:
    """A value as a person reads it in a table: numbers with ``digits`` significant
    digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value + 0.0:.{digits}g}"  # + 0.0: -0.0 shows as 0
    return str(value)


def clip(text: str, width: int, middle: bool = False) -> str:
    """``text`` in at most ``width`` characters, with ``…`` at its end (or middle)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if middle:
        head = (width - 1) // 2 + (width - 1) % 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head):]
    return text[: width - 1] + "…"


def unique_prefixes(values: Sequence[str], least: int = ID_CHARS) -> list[str]:
    """For each value its shortest prefix (``least`` characters or more) that no other
    distinct value shares, so that the prefix still names it (``dscheduler show``)."""
    distinct = sorted(set(values))
    out: dict[str, str] = {}
    for i, v in enumerate(distinct):
        n = least
        for other in distinct[max(0, i - 1): i] + distinct[i + 1: i + 2]:
            common = len(_common(v, other))
            n = max(n, common + 1)
        out[v] = v[:n]
    return [out[v] for v in values]


def _common(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


@dataclass
class Col:
    """One column: ``name`` (what --columns matches), ``header``, ``cells`` as text."""

    name: str
    header: str
    cells: list[str]
    kind: str = "text"  # text | number (right) | id (cut in the middle) | label | count
    width: int = field(default=0)

    @property
    def natural(self) -> int:
        return max([len(self.header), *(len(c) for c in self.cells)])

    @property
    def min_width(self) -> int:
        """The narrowest it may be: text keeps its header and 12 characters; labels,
        numbers and ids are never cut."""
        if self.kind != "text" or self.name == "label":
            return self.natural
        return min(self.natural, max(len(self.header), 12))


def fit(cols: Sequence[Col], width: int, wide: bool = False) -> tuple[list[Col], list[Col]]:
    """The columns to show, in the order given, sized to ``width``; and the ones dropped.

    ``cols`` comes most important first.  First every column that fits whole (text up to
    MAX_TEXT, a label up to half the line) is kept, in that order; then text that would
    have to be cut gets what is left if that is at least its ``min_width``: a cut path is
    worth less than a whole number beside it.  With ``wide`` every column is kept at its
    natural width, however wide.
    """
    if wide:
        return [replace(c, width=c.natural) for c in cols], []

    def whole(c: Col) -> int:
        return min(c.natural, max(20, width // 2) if c.name == "label" else MAX_TEXT)

    chosen: dict[int, int] = {}  # index in cols -> width
    used = -GAP
    for i, c in enumerate(cols):
        if used + GAP + whole(c) <= width:
            chosen[i] = whole(c)
            used += GAP + whole(c)
    for i, c in enumerate(cols):
        room = width - used - GAP
        if i not in chosen and c.kind == "text" and room >= c.min_width:
            chosen[i] = room
            used += GAP + room
    kept = [replace(c, width=chosen[i]) for i, c in enumerate(cols) if i in chosen]
    dropped = [c for i, c in enumerate(cols) if i not in chosen]
    _widen(kept, width - used)
    return kept, dropped


def _widen(kept: list[Col], room: int) -> None:
    """Give ``room`` characters left on the line to cut columns, one each in turn."""
    while room > 0:
        wanting = [c for c in kept if c.width < c.natural][:room]
        if not wanting:
            break
        for c in wanting:
            c.width += 1
        room -= len(wanting)


def fit_by(cols: Sequence[Col], importance: Sequence[str], width: int
           ) -> tuple[list[Col], list[Col]]:
    """:func:`fit` with the columns named in ``importance`` kept first (in that order),
    shown in the order of ``cols``."""
    rank = {n: i for i, n in enumerate(importance)}
    order = sorted(range(len(cols)), key=lambda i: (rank.get(cols[i].name, len(rank)), i))
    kept, dropped = fit([cols[i] for i in order], width)
    place = {c.name: i for i, c in enumerate(cols)}
    return sorted(kept, key=lambda c: place[c.name]), dropped


def fit_even(first: Col, rest: Sequence[Col], width: int) -> tuple[list[Col], list[Col]]:
    """``first`` whole (up to MAX_TEXT), then as many of ``rest`` as get ``min_width`` each
    from an even share of the line (``compare``: one column per run, none more important);
    the ones dropped are the last."""
    head = replace(first, width=min(first.natural, MAX_TEXT))
    least = [min(c.natural, 12) for c in rest]  # headers are cut too, here
    n = len(rest)
    while n and head.width + sum(least[:n]) + GAP * n > width:
        n -= 1
    kept = [head]
    if n:
        share = (width - head.width - GAP * n) // n
        kept += [replace(c, width=min(c.natural, max(share, m)))
                 for c, m in zip(rest[:n], least, strict=False)]
        _widen(kept, width - table_width(kept))
    return kept, list(rest[n:])


def render(cols: Sequence[Col]) -> Table:
    """A borderless rich Table of ``cols`` at their widths; cells clipped here, not by rich."""
    table = Table(box=None, pad_edge=False, padding=(0, GAP // 2), show_edge=False)
    for c in cols:
        table.add_column(Text(clip(c.header, c.width)), width=c.width, no_wrap=True,
                         justify="right" if c.kind == "number" else "left")
    if not cols:
        return table
    for i in range(len(cols[0].cells) if cols else 0):
        table.add_row(*(Text(clip(c.cells[i], c.width, middle=c.kind == "id"))
                        for c in cols))
    return table


def table_width(cols: Sequence[Col]) -> int:
    return sum(c.width for c in cols) + GAP * max(0, len(cols) - 1)


def footer(dropped: Sequence[str], hidden: int, width: int) -> str:
    """One line naming the columns not shown: those with no room first, then a count of
    those left out by default (constant across the rows, or ids)."""
    if not dropped and not hidden:
        return ""
    more = len(dropped) + hidden
    tail = "; --wide or --columns to show"
    names = list(dropped)
    while names:
        shown = ", ".join(names) + (", …" if more > len(names) else "")
        line = f"+{more} columns ({shown}){tail}"
        if len(line) <= width:
            return line
        names.pop()
    return f"+{more} columns{tail}"


def select(names: Sequence[str], patterns: Iterable[str]) -> list[str]:
    """Column names matching ``patterns`` (names or globs, comma-separated), in the order
    of the patterns; a ConfigError quoting a pattern that matches nothing."""
    chosen: list[str] = []
    for raw in patterns:
        for pattern in (p.strip() for p in raw.split(",")):
            if not pattern:
                continue
            found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                raise ConfigError(
                    f"--columns {pattern!r} names no column; columns are "
                    f"{', '.join(names)} (globs such as 'metrics.*' work too)")
            chosen += [n for n in found if n not in chosen]
    return chosen


# -- store.runs() listings (dscheduler.store.catalogue.listing.Rows) -----------------------------

#: Columns holding ids: shortened to unique prefixes unless --wide.
ID_COLUMNS = ("run_id", "env_id", "config_hash", "key")
#: Columns always shown by default, in order, listing by run or by node.
BASE = {"run": ("label", "state", "nodes"), "node": ("name", "label", "state", "case",
                                                     "seconds")}
#: Shown by default after the varying groups, when there is room.
LATER = {"run": ("run_id",), "node": ("run_id", "host", "attempts")}
_NUMBERS = ("nodes", "seconds", "attempts")


def _values(frame: Any, name: str) -> list[Any]:
    return list(frame.column(name))


def _varies(cells: list[str]) -> bool:
    """Whether a column tells the rows apart: two distinct cells (one row: any value)."""
    return len(set(cells)) > 1 or (len(cells) == 1 and cells[0] != "")


def frame_col(frame: Any, name: str, full_ids: bool = False) -> Col:
    """Column ``name`` of a ``store.runs()`` frame as text, with its kind."""
    values = _values(frame, name)
    cells = [cell(v) for v in values]
    if name in ID_COLUMNS:
        return Col(name, name, cells if full_ids else unique_prefixes(cells), "id")
    if name == "name" and not full_ids:  # task-key16: the task, then a key prefix
        parts = [c.rpartition("-") for c in cells]
        keys = unique_prefixes([p[2] for p in parts])
        return Col(name, name, [f"{p[0]}-{k}" if p[1] else p[2]
                                for p, k in zip(parts, keys, strict=True)], "id")
    numeric = name in _NUMBERS or name.startswith("metrics.") or all(
        (isinstance(v, int | float) and not isinstance(v, bool)) or c == ""
        for v, c in zip(values, cells, strict=True))
    return Col(name, name, cells, "number" if numeric and any(cells) else "text")


def default_columns(frame: Any, by: str) -> list[str]:
    """The columns a person compares rows by, most important first: label and state
    (and nodes), the metrics that vary between the rows, then params, config and tags
    that vary; ids when labels do not tell the rows apart."""
    names = list(frame.columns)
    cells = {n: [cell(v) for v in _values(frame, n)] for n in names}
    chosen = [n for n in BASE[by] if n in names]
    labels = cells.get("label", [])
    if by == "run" and "run_id" in names and (
            "" in labels or len(set(labels)) < len(labels)):
        chosen.insert(0, "run_id")  # the label does not name each run
    for group in ("metrics.", "params.", "config."):
        for n in names:
            # A config field logged as a param too (or the label) is shown once.
            if n.startswith(group) and _varies(cells[n]) and not any(
                    cells[n] == cells[c] for c in chosen):
                chosen.append(n)
    chosen += [n for n in LATER[by] if n in names and n not in chosen]
    chosen += [n for n in names if n.startswith("tags.") and _varies(cells[n])]
    return chosen


def headers(cols: list[Col]) -> None:
    """Headers without their group (``rmse`` for ``metrics.rmse``) where no other
    column would have the same header."""
    short = [c.name.partition(".")[2] or c.name for c in cols]
    for c, s in zip(cols, short, strict=True):
        c.header = s if short.count(s) == 1 else c.name


def frame_table(frame: Any, by: str, width: int, columns: list[str] | None = None,
                wide: bool = False) -> tuple[Table, int, str]:
    """``dscheduler runs``' table of ``frame``, its width, and its footer line.

    Default: :func:`default_columns`, fitted to ``width``; ``columns``: those names and
    globs (:func:`select`); ``wide``: every column at its natural width, ids whole.
    """
    names = [str(c) for c in frame.columns]
    if wide:
        wanted = names
    elif columns:
        wanted = select(names, columns)
    else:
        wanted = default_columns(frame, by)
    cols = [frame_col(frame, n, full_ids=wide) for n in wanted]
    headers(cols)
    kept, dropped = fit(cols, width, wide)
    hidden = 0 if wide or columns else len(names) - len(wanted)
    return render(kept), table_width(kept), footer([c.name for c in dropped], hidden, width)


def _plain(value: Any) -> Any:
    """A value for CSV and JSON: None for a missing one (None, NaN, NaT)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return None if type(value).__name__ == "NaTType" else value


def to_csv(rows: Any) -> str:
    """Every column and row of a listing as CSV: missing values empty, floats whole."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows.columns)
    columns = [rows.column(c) for c in rows.columns]
    for i in range(len(rows)):
        writer.writerow(["" if (v := _plain(c[i])) is None else v for c in columns])
    return out.getvalue()


def to_json(rows: Any) -> str:
    """Every column and row of a listing as a JSON list of objects (missing: null)."""
    columns = [(name, rows.column(name)) for name in rows.columns]
    records = [{name: _plain(values[i]) for name, values in columns}
               for i in range(len(rows))]
    return json.dumps(records, indent=1, separators=(",", ":"), default=str)


# -- show and compare --------------------------------------------------------------------


def attempts_table(rows: list[list[str]], width: int) -> Table:
    """``dscheduler show``'s attempts: attempt, state, host, start, seconds, error; the
    error is cut to what fits (the log tail below has it whole)."""
    names = ["attempt", "state", "host", "start", "seconds", "error"]
    cols = [Col(n, n, [r[i] for r in rows], "number" if n in ("attempt", "seconds")
                else "text") for i, n in enumerate(names)]
    kept, _ = fit_by(cols, ["attempt", "state", "start", "seconds", "host", "error"], width)
    return render(kept)


def compare_table(refs: list[str], rows: list[dict[str, Any]], all_fields: bool,
                  width: int) -> tuple[Table, int, int, str]:
    """``dscheduler compare``: one row per field (those that differ, unless
    ``all_fields``), one column per ref; the table, fields shown, fields, footer."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    lines: list[tuple[str, list[str]]] = []
    for name in fields:
        cells = [cell(row.get(name), digits=6) for row in rows]
        if all_fields or len(set(cells)) > 1:
            if name in ID_COLUMNS:
                cells = unique_prefixes(cells)
            lines.append((name, cells))
    cols = [Col("field", "field", [n for n, _ in lines], "count")]
    cols += [Col(f"{i}", ref, [c[i] for _, c in lines]) for i, ref in enumerate(refs)]
    for c in cols[1:]:
        c.kind = "number" if all(_number(x) for x in c.cells) else "text"
    kept, dropped = fit_even(cols[0], cols[1:], width)
    names = ", ".join(c.header for c in dropped)
    more = f"+{len(dropped)} of {len(refs)} not shown (no room): {names}" if dropped else ""
    return render(kept), len(lines), len(fields), clip(more, width)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True
