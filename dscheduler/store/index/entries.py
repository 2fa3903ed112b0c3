"""Index entries: one line of a segment, one value of the snapshot, and which one wins.

An entry says "node ``path`` was in ``state`` with ``key`` as of ``seq``" (docs/design.md §14.1):
``path`` is the node's ``.done`` link relative to the store root (``Layout.node_id``) or a run's
``run.json`` (``Layout.run_id_path``); ``seq`` that of the record it reflects
(``records.next_seq``); ``state`` ``succeeded`` (finished), ``running``, ``failed``,
``cancelled``, ``damaged``, ``unlinked`` (not finished) or ``run`` (a run's entry); ``key`` the
node's full key (a run's: its config digest); ``summary`` a small dict kept for listing.

Per path the entry with the highest ``seq`` wins, wherever it was read; at equal ``seq`` one that
is not ``succeeded``.  Reading an entry twice changes nothing, so any segment may be replayed
from any earlier offset.  A segment line is the JSON array ``[path, seq, state, key, summary]``
and a newline; a snapshot value is the string ``"state seq key"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..record import DAMAGED as DAMAGED  # the states an entry shares with its record
from ..record import RUNNING as RUNNING
from ..record import SUCCEEDED
from ..records import dumps, loads

UNLINKED = "unlinked"  # a succeeded record whose .done link is not made (yet)
RUN = "run"


@dataclass(frozen=True)
class Entry:
    """One index entry (see the module's docstring)."""

    path: str
    seq: int
    state: str
    key: str
    summary: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The segment line as text: one JSON array and a newline (made once: a
        worker appends it and returns it to the driver)."""
        made = self.__dict__.get("_text")
        if made is None:
            made = dumps([self.path, self.seq, self.state, self.key, self.summary],
                         separators=(",", ":"), default=str) + "\n"
            object.__setattr__(self, "_text", made)
        return made

    def line(self) -> bytes:
        """The segment line: one JSON array and a newline."""
        return self.text().encode()

    def value(self) -> str:
        return f"{self.state} {self.seq} {self.key}"

    @classmethod
    def from_list(cls, item: list[Any]) -> Entry:
        path, seq, state, key, summary = item
        if not (isinstance(path, str) and isinstance(seq, int) and isinstance(state, str)
                and isinstance(key, str) and isinstance(summary, dict)):
            raise ValueError(f"not an index entry: {item!r:.200}")
        return cls(path, seq, state, key, summary)


def finished(value: str | None, key: str) -> bool:
    """Whether a snapshot value says "finished with ``key``" (planning's test)."""
    return value is not None and value.endswith(key) and value.startswith("succeeded ")


def order(value: str) -> tuple[int, bool]:
    """What ranks a snapshot value: its seq, then not-succeeded above succeeded."""
    state, seq, _ = value.split(" ", 2)
    return int(seq), state != SUCCEEDED


class Merged:
    """Entries merged by path, the winner kept (see the module's docstring).

    ``values`` maps path to snapshot value; ``summaries`` holds the summary of
    each path whose winning entry came from a segment (``{}``: none), to be
    laid over the snapshot's summaries file.
    """

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.summaries: dict[str, dict[str, Any]] = {}

    def add(self, entry: Entry) -> None:
        old = self.values.get(entry.path)
        if old is not None and order(old) >= (entry.seq, entry.state != SUCCEEDED):
            return
        self.values[entry.path] = entry.value()
        self.summaries[entry.path] = entry.summary

    def add_lines(self, data: bytes) -> int:
        """Add the entries of whole lines in ``data``; the number of lines skipped.

        A line that is not an entry (a crash can leave zeros or a torn line in
        a file) is skipped: entries that make a node unfinished are fsynced
        before the change they announce, so what a crash mangles can only be
        one that makes a node finished, which the node's record restores.
        """
        bad = 0
        for raw in data.splitlines():
            if not raw.strip(b"\0 "):
                continue
            try:
                self.add(Entry.from_list(loads(raw)))
            except (ValueError, TypeError, UnicodeDecodeError):
                bad += 1
        return bad
