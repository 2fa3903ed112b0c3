"""The filter language of ``store.runs(filter=...)``, and ``order_by``.

MLflow's search syntax, plus ``or``, ``not`` and parentheses, which MLflow's
users have asked for (its issues #4135 and #6069)::

    metrics.rmse < 1.5 and params.model = 'linear' and tags.stage = 'eval'
    (params.model in ('linear', 'ridge') or label like 'base%') and not state = 'failed'
    metrics.`val loss` <= 0.2 and config.members >= 4 and tags.note is not null

A column is ``metrics.NAME``, ``params.NAME``, ``tags.NAME``, ``config.NAME``
(singular prefixes too; a NAME with other characters in backquotes or double
quotes) or an attribute of the listing (``state``, ``label``, ``run_id``, ...;
``attributes.`` may prefix it).  Operators: ``= != < <= > >=``, ``[not] like``
and ``[not] ilike`` (``%`` and ``_``), ``[not] in (...)``, ``is [not] null``.
Values: numbers, 'strings' or "strings", true, false.

Missing values follow SQL: a row without ``metrics.rmse`` is neither
``< 1.5`` nor ``not < 1.5`` (Kleene logic, pandas' nullable booleans); a
comparison with a number compares numerically (a param stored as the string
``"0.1"`` is 0.1).  A filter that does not parse is a
:class:`~dscheduler.errors.ConfigError` that shows the text with a caret
under the position.

The grammar is lark's (a well-kept parser library, LALR): it gives the
error positions and expected tokens that a hand-written parser would have
to rebuild.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> not_
         | atom
?atom: "(" or_expr ")"
     | column COMPARE value                             -> compare
     | column NEGATE? LIKE STRING                       -> like
     | column NEGATE? _IN "(" value ("," value)* ")"    -> isin
     | column _IS NEGATE? _NULL                         -> isnull
column: PREFIXED | NAME
order: column ORDER?
ORDER.3: /(asc|desc)\b/i
value: NUMBER | STRING | TRUE | FALSE

PREFIXED.2: /(metrics?|params?|tags?|config|attributes?)\.(`[^`]+`|"[^"]+"|[A-Za-z_][\w.:\/-]*)/i
_OR.3: /or\b/i
_AND.3: /and\b/i
_NOT.3: /not\b/i
NEGATE.3: /not\b/i
LIKE.3: /i?like\b/i
_IN.3: /in\b/i
_IS.3: /is\b/i
_NULL.3: /null\b/i
TRUE.3: /true\b/i
FALSE.3: /false\b/i
NAME: /(?!(and|or|not|in|is|i?like|null|true|false|asc|desc)\b)[A-Za-z_][A-Za-z0-9_]*/i
COMPARE: "<=" | ">=" | "!=" | "<>" | "==" | "=" | "<" | ">"
NUMBER: /[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/
STRING: /'([^']|'')*'/ | /"([^"]|"")*"/
%ignore /\s+/
"""

PREFIXES = {"metric": "metrics", "metrics": "metrics", "param": "params", "params": "params",
            "tag": "tags", "tags": "tags", "config": "config", "attribute": "",
            "attributes": ""}
_WORDS = {"_OR": "or", "_AND": "and", "_NOT": "not", "NEGATE": "not", "LIKE": "like",
          "_IN": "in", "_IS": "is", "_NULL": "null", "COMPARE": "a comparison (= < ...)",
          "PREFIXED": "a column (metrics.x, params.x ...)", "NAME": "a column",
          "NUMBER": "a number", "STRING": "a 'string'", "TRUE": "true", "FALSE": "false",
          "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "$END": "the end",
          "ORDER": "asc or desc"}


@functools.cache
def _parser() -> Any:
    import lark

    return lark.Lark(GRAMMAR, parser="lalr", propagate_positions=True,
                     start=["start", "order"])


def _caret(text: str, column: int, message: str) -> ConfigError:
    return ConfigError(f"bad filter: {message} at column {column}\n  {text}\n  "
                       f"{' ' * (column - 1)}^")


def parse(text: str, start: str = "start") -> Any:
    """The syntax tree of a filter (or of one ``order_by`` item: ``start="order"``); a
    ConfigError with a caret where it does not parse."""
    import lark

    try:
        return _parser().parse(text, start=start)
    except lark.UnexpectedInput as err:
        column = getattr(err, "column", None)
        token = getattr(err, "token", None)
        if not isinstance(column, int) or column < 1 or getattr(token, "type", "") == "$END":
            column = len(text) + 1
        expected = sorted({_WORDS.get(str(e), str(e)) for e in
                           (getattr(err, "expected", None) or
                            getattr(err, "allowed", None) or ())
                           if start == "order" or str(e) != "ORDER"})
        got = token if token is not None else getattr(err, "char", None)
        what = "unexpected end" if got is None or str(got) == "" \
            else f"unexpected {str(got)!r}"
        more = f"; expected {', '.join(expected)}" if expected else ""
        raise _caret(text, column, what + more) from None


def _unquote(string: str) -> str:
    quote = string[0]
    return string[1:-1].replace(quote * 2, quote)


def column_name(token: Any, attributes: set[str], text: str) -> str:
    """The DataFrame column a column token names; unknown attributes are an error."""
    raw = str(token)
    if token.type == "PREFIXED":
        prefix, _, name = raw.partition(".")
        if name[:1] in "`\"":
            name = name[1:-1]
        group = PREFIXES[prefix.lower()]
        if group:
            return f"{group}.{name}"
        raw = name
    if raw not in attributes:
        raise _caret(text, token.column, f"unknown column {raw!r}; columns are "
                     f"{', '.join(sorted(attributes))} and metrics.NAME, params.NAME, "
                     "tags.NAME, config.NAME")
    return raw


def _literal(tree: Any) -> Any:
    token = tree.children[0]
    if token.type == "NUMBER":
        number = float(token)
        return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", token) \
            else number
    if token.type == "STRING":
        return _unquote(str(token))
    return token.type == "TRUE"


def _like_pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL | (re.I if ignore_case else 0))


class _Evaluator:
    """Evaluates a filter tree over a DataFrame into a nullable boolean Series."""

    def __init__(self, frame: pd.DataFrame, attributes: set[str], text: str) -> None:
        self.frame, self.attributes, self.text = frame, attributes, text

    def column(self, tree: Any) -> pd.Series:
        import pandas as pd

        name = column_name(tree.children[0], self.attributes, self.text)
        if name in self.frame.columns:
            return self.frame[name]
        return pd.Series([None] * len(self.frame), index=self.frame.index, dtype=object)

    def __call__(self, tree: Any) -> pd.Series:
        return getattr(self, tree.data)(tree)

    def or_expr(self, tree: Any) -> pd.Series:
        return functools.reduce(lambda a, b: a | b, (self(c) for c in tree.children))

    def and_expr(self, tree: Any) -> pd.Series:
        return functools.reduce(lambda a, b: a & b, (self(c) for c in tree.children))

    def not_(self, tree: Any) -> pd.Series:
        return ~self(tree.children[0])

    def _masked(self, values: Any, known: Any) -> pd.Series:
        import pandas as pd

        out = pd.array(values, dtype="boolean")
        out[~known] = pd.NA
        return pd.Series(out, index=self.frame.index)

    def compare(self, tree: Any) -> pd.Series:
        import operator


        series = self.column(tree.children[0])
        op = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
              "<": operator.lt, "<=": operator.le, ">": operator.gt,
              ">=": operator.ge}[str(tree.children[1])]
        literal = _literal(tree.children[2])
        if isinstance(literal, bool):
            known = series.map(lambda v: isinstance(v, bool)).to_numpy(bool)
            values = series.where(known, False).astype(bool)
            return self._masked(op(values, literal).to_numpy(bool), known)
        if isinstance(literal, int | float):
            numbers = _numbers(series)
            known = numbers.notna().to_numpy(bool)
            return self._masked(op(numbers.fillna(0), literal).to_numpy(bool), known)
        known = _strings(series)
        values = series.where(known, "").astype(str)
        return self._masked(op(values, literal).to_numpy(bool), known)

    def like(self, tree: Any) -> pd.Series:
        children = list(tree.children)
        negate = len(children) == 4
        series = self.column(children[0])
        pattern = _like_pattern(_unquote(str(children[-1])),
                                str(children[-2]).lower() == "ilike")
        known = _strings(series)
        hits = series.where(known, "").astype(str).str.match(pattern)
        out = self._masked(hits.to_numpy(bool) & known, known)
        return ~out if negate else out

    def isin(self, tree: Any) -> pd.Series:
        children = list(tree.children)
        negate = getattr(children[1], "type", None) == "NEGATE"
        series = self.column(children[0])
        values = [_literal(v) for v in children[2 if negate else 1:]]
        known = series.notna().to_numpy(bool)
        strings = {v for v in values if isinstance(v, str)}
        numbers = {v for v in values if isinstance(v, int | float) and not isinstance(v, bool)}

        def hit(v: Any) -> bool:
            if isinstance(v, str):
                return v in strings or _number(v) in numbers
            return not isinstance(v, bool) and v in numbers

        out = self._masked(series.map(hit).to_numpy(bool), known)
        return ~out if negate else out

    def isnull(self, tree: Any) -> pd.Series:
        import pandas as pd

        children = list(tree.children)
        nulls = self.column(children[0]).isna()
        result = ~nulls if len(children) == 2 else nulls
        return pd.Series(pd.array(result.to_numpy(bool), dtype="boolean"),
                         index=self.frame.index)


def _strings(series: pd.Series) -> Any:
    """Which values of ``series`` are strings (a numpy bool array), without a Python
    call per value when the column's dtype says so."""
    import pandas as pd

    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series.notna().to_numpy(bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.isna().to_numpy(bool) & False
    return series.map(lambda v: isinstance(v, str)).to_numpy(bool)


def _numbers(series: pd.Series) -> pd.Series:
    """``series`` as floats (NaN where a value is not a number; bools are not numbers)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        return pd.Series(float("nan"), index=series.index)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.astype(float)
    if series.dtype == object:
        series = series.where(~series.map(lambda v: isinstance(v, bool)))
    return pd.to_numeric(series, errors="coerce")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def apply_filter(frame: pd.DataFrame, text: str | None, attributes: set[str]) -> pd.DataFrame:
    """The rows of ``frame`` for which the filter ``text`` is true (unknown: excluded)."""
    if not text or not text.strip():
        return frame
    tree = parse(text)
    if len(frame) == 0:
        _check_columns(tree, attributes, text)
        return frame
    mask = _Evaluator(frame, attributes, text)(tree)
    return frame[mask.fillna(False).to_numpy(bool)]


def _check_columns(tree: Any, attributes: set[str], text: str) -> None:
    for sub in tree.iter_subtrees():
        if sub.data == "column":
            column_name(sub.children[0], attributes, text)


def apply_order(frame: pd.DataFrame, order_by: list[str] | str | None,
                attributes: set[str]) -> pd.DataFrame:
    """``frame`` sorted by ``["metrics.rmse asc", "label desc", ...]``; missing values last."""
    import pandas as pd

    if not order_by:
        return frame
    if isinstance(order_by, str):
        order_by = [order_by]
    columns, ascending = [], []
    for item in order_by:
        tree = parse(item.strip(), start="order")
        name = column_name(tree.children[0].children[0], attributes, item.strip())
        if name not in frame.columns:
            frame = frame.assign(**{name: None})
        columns.append(name)
        ascending.append(len(tree.children) < 2 or str(tree.children[1]).lower() == "asc")

    def key(series: pd.Series) -> pd.Series:
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.notna().sum() == series.notna().sum():
            return numbers
        return series.map(lambda v: None if v is None or v is pd.NA else str(v))

    return frame.sort_values(columns, ascending=ascending, na_position="last",
                             kind="mergesort", key=key)
