"""An experiment's cases (init times) from its ``dates:`` section, without pandas.

``dates:`` is a range (``start``, ``end``, ``frequency``; both ends included), an
explicit ``list``, or both, less the times in ``exclude``; a plain YAML list is
the list alone.  Times are ISO 8601 (``2020-01-01T00:00``, ``2020-01-02``, an
offset is turned into UTC) or a case itself (``202001010000``).  Frequencies are
``<n><unit>``, units ``s``, ``min`` (``T``), ``h``, ``D`` (a week: ``7D``).  Cases come out
sorted, each once, as ``CASE_FORMAT`` strings.  Plain datetime arithmetic:
pandas' date_range cost a quarter of a second of import for a few additions.
Errors come from ``where(key...)``: a ConfigError naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..errors import ConfigError

CASE_FORMAT = "%Y%m%d%H%M"
_UNITS = {"s": 1, "min": 60, "T": 60, "h": 3600, "H": 3600, "D": 86400, "d": 86400}
_KEYS = ("start", "end", "frequency", "list", "exclude")
#: Most cases a range may give: a typo such as 1s over years would fill the memory.
MAX_CASES = 1_000_000

#: where("dates", "start") -> a function making the ConfigError for that value (its line)
Where = Callable[..., Callable[[str], ConfigError]]


def cases(dates: Any, where: Where) -> list[str]:
    """The cases ``dates`` gives (see the module doc); ``where(*keys)(text)`` makes the
    error for the value at ``("dates", *keys)``."""
    if isinstance(dates, list):
        dates = {"list": dates}
    if not isinstance(dates, dict):
        raise where("dates")(f"dates must be a mapping (start, end, frequency, list, "
                             f"exclude) or a list of times, got {dates!r}")
    unknown = sorted(set(map(str, dates)) - set(_KEYS))
    if unknown:
        raise where("dates", unknown[0])(f"dates has unknown keys {unknown}; use "
                                         f"{', '.join(_KEYS)}")
    times = set(_range(dates, where)) | set(_listed(dates, "list", where))
    for i, t in enumerate(_listed(dates, "exclude", where)):
        if t not in times:
            raise where("dates", "exclude", i)(
                f"dates: exclude {t:%Y-%m-%dT%H:%M} is not one of the dates; remove it "
                "or correct it")
        times.discard(t)
    if not times:
        raise where("dates")("dates give no case: check start and end, list and exclude")
    return [t.strftime(CASE_FORMAT) for t in sorted(times)]


def _range(dates: dict[str, Any], where: Where) -> list[datetime]:
    if "start" not in dates and "end" not in dates:
        if "frequency" in dates:
            raise where("dates", "frequency")("dates: frequency needs start and end")
        return []
    if not {"start", "end"} <= set(dates):
        missing = "end" if "start" in dates else "start"
        raise where("dates")(f"dates: a range needs start and end, {missing} is missing "
                             "(frequency defaults to 1D)")
    start = when(dates["start"], where("dates", "start"))
    end = when(dates["end"], where("dates", "end"))
    step = frequency(dates.get("frequency", "1D"), where("dates", "frequency"))
    if end < start:
        raise where("dates", "end")(f"dates: end {dates['end']} is before start "
                                    f"{dates['start']}, so they give no case")
    count = (end - start) // step + 1
    if count > MAX_CASES:
        raise where("dates", "frequency")(
            f"dates: {count} cases at that frequency (at most {MAX_CASES}); use a longer one")
    return [start + k * step for k in range(count)]


def _listed(dates: dict[str, Any], key: str, where: Where) -> list[datetime]:
    values = dates.get(key) or []
    if not isinstance(values, list):
        raise where("dates", key)(f"dates: {key} must be a list of times, got {values!r}")
    return [when(v, where("dates", key, i)) for i, v in enumerate(values)]


def when(value: Any, error: Callable[[str], ConfigError]) -> datetime:
    """A naive UTC datetime from a YAML time (a datetime, a date or a string)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and re.fullmatch(r"\d{12}", value.strip()):
        parsed = datetime.strptime(value.strip(), CASE_FORMAT)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise error(f"{value!r} is not a time: write 2020-01-01T00:00 (ISO 8601) or "
                        "202001010000") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def frequency(value: Any, error: Callable[[str], ConfigError]) -> timedelta:
    """``12h``, ``1D``, ``30min`` ... as a timedelta (pandas' fixed-length aliases)."""
    found = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+)\s*", str(value))
    if not found or found[2] not in _UNITS or int(found[1] or 1) == 0:
        raise error(f"frequency {value!r} is not a step such as 6h, 12h, 1D, 30min or 7D "
                    f"(units {', '.join(_UNITS)}); months and years have no fixed length: "
                    "list those dates")
    return timedelta(seconds=int(found[1] or 1) * _UNITS[found[2]])
