"""The filter language of ``store.runs(filter=...)``, and ``order_by``: MLflow's answers.

MLflow's search syntax, plus ``or``, ``not``, parentheses, ``is [not] null`` and ``config.``
columns (MLflow's issues #4135, #6069): ``metrics.rmse < 1.5 and `params`.layers = '10'``.
A column is ``metrics.``, ``params.``, ``tags.``, ``config.`` NAME (prefix singular or
backquoted too; NAME backquoted or double-quoted) or an attribute (``state``, ``run_id``,
...; ``attributes.`` may prefix it). Types as MLflow's: a metric is a number, a param or tag
the string of its logged value (``params.layers = '10'`` matches 10), an attribute has its
own; a comparison that can never match (``metrics.x = 'a'``, ``run_id = 1``, ``params.x <
'a'``) is a ConfigError. Beyond MLflow: a param or tag against an unquoted number compares
the values that are numbers. Missing values are unknown (Kleene logic). ``order_by``: missing
values last, NaN metrics just before them, either direction. lark (LALR) parses: positions
and expected tokens come with its errors; a bad filter is a ConfigError with a caret.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Attributes of a listing: their names, or their names and types ("number" or "string";
#: a set, or any other type, compares by the values' own types).
Attributes = Mapping[str, str] | Set[str]

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

PREFIXED.2: /(`GROUP`|GROUP)\.(`[^`]+`|"[^"]+"|[A-Za-z_][\w.:\/-]*)/i
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
""".replace("GROUP", "(metrics?|params?|tags?|config|attributes?|attr|run)")

PREFIXES = {"metric": "metrics", "metrics": "metrics", "param": "params", "params": "params",
            "tag": "tags", "tags": "tags", "config": "config", "attribute": "",
            "attributes": "", "attr": "", "run": ""}
#: What the values of a group are: metrics numbers, params and tags MLflow's strings.
_KINDS = {"metrics": "number", "params": "text", "tags": "text"}
_ORDERING = {"<", "<=", ">", ">="}
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


def column_name(token: Any, attributes: Attributes, text: str) -> str:
    """The DataFrame column a column token names; unknown attributes are an error."""
    raw = str(token)
    if token.type == "PREFIXED":
        prefix, _, name = raw.partition(".")
        if name[:1] in "`\"":
            name = name[1:-1]
        group = PREFIXES[prefix.strip("`").lower()]
        if group:
            return f"{group}.{name}"
        raw = name
    if raw not in attributes:
        raise _caret(text, token.column, f"unknown column {raw!r}; columns are "
                     f"{', '.join(sorted(attributes))} and metrics.NAME, params.NAME, "
                     "tags.NAME, config.NAME")
    return raw


def column_kind(name: str, attributes: Attributes) -> str:
    """What a column's values are: ``number`` (metrics), ``text`` (params, tags: MLflow's
    strings), ``string`` or ``number`` (an attribute's type), else ``value`` (their own)."""
    group, dot, _ = name.partition(".")
    if dot and group in _KINDS:
        return _KINDS[group]
    kind = attributes.get(name) if isinstance(attributes, Mapping) else None
    return kind if kind in ("number", "string") else "value"


def _literal(tree: Any) -> Any:
    token = tree.children[0]
    if token.type == "NUMBER":
        number = float(token)
        return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", token) \
            else number
    if token.type == "STRING":
        return _unquote(str(token))
    return token.type == "TRUE"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _like_pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL | (re.I if ignore_case else 0))


def _never(text: str, name: str, op: str, value_token: Any, why: str) -> ConfigError:
    """The error of a comparison that can never match: it quotes it and says the fix."""
    value = f"(... {value_token} ...)" if op == "in" else str(value_token)
    return _caret(text, value_token.column, f"{name} {op} {value} can never match: {why}")


class _Evaluator:
    """Evaluates a filter tree over a DataFrame into a nullable boolean Series."""

    def __init__(self, frame: pd.DataFrame, attributes: Attributes, text: str) -> None:
        self.frame, self.attributes, self.text = frame, attributes, text

    def column(self, tree: Any) -> tuple[pd.Series, str]:
        """The column's values (all missing when no row has it) and its kind."""
        import pandas as pd

        name = column_name(tree.children[0], self.attributes, self.text)
        kind = column_kind(name, self.attributes)
        if name in self.frame.columns:
            return self.frame[name], kind
        return pd.Series([None] * len(self.frame), index=self.frame.index, dtype=object), kind

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

    def _check(self, kind: str, column: Any, values: list[Any], op: str) -> None:
        """Refuse what can never match, with the fix (MLflow refuses these too)."""
        name, text = str(column.children[0]), self.text
        for tree in values:
            literal, token = _literal(tree), tree.children[0]
            if kind == "number" and not _is_number(literal):
                example = f"{name} in (0.5, 1)" if op == "in" else f"{name} {op} 0.5"
                raise _never(text, name, op, token, f"{name} is a number; compare it with a "
                             f"number ({example}), or a param or tag with a string")
            if kind == "string" and not isinstance(literal, str):
                example = f"{name} in ('{token}')" if op == "in" else f"{name} {op} '{token}'"
                raise _never(text, name, op, token, f"{name} is a string; quote the value "
                             f"({example})")
            if kind == "text" and isinstance(literal, str) and op in _ORDERING:
                fix = f"write the number unquoted ({name} {op} {literal}) to compare the " \
                    "values that are numbers" if _number(literal) is not None else \
                    f"use = != like or in ({name} like '{literal}%')"
                raise _never(text, name, op, token, f"{op} compares numbers, and params and tags "
                             f"are strings (MLflow allows = != like ilike in on them); {fix}")

    def compare(self, tree: Any) -> pd.Series:
        import operator

        series, kind = self.column(tree.children[0])
        symbol = str(tree.children[1])
        self._check(kind, tree.children[0], [tree.children[2]], symbol)
        op = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
              "<": operator.lt, "<=": operator.le, ">": operator.gt,
              ">=": operator.ge}[symbol]
        literal = _literal(tree.children[2])
        if isinstance(literal, bool):
            known = series.map(lambda v: isinstance(v, bool)).to_numpy(bool)
            values = series.where(known, False).astype(bool)
            return self._masked(op(values, literal).to_numpy(bool), known)
        if isinstance(literal, int | float):
            numbers = _numbers(series)
            known = numbers.notna().to_numpy(bool)
            return self._masked(op(numbers.fillna(0), literal).to_numpy(bool), known)
        if kind == "text":  # MLflow's: the string of the logged value
            known = series.notna().to_numpy(bool)
            values = param_strings(series)
        else:
            known = _strings(series)
            values = series.where(known, "").astype(str)
        return self._masked(op(values, literal).to_numpy(bool), known)

    def like(self, tree: Any) -> pd.Series:
        children = list(tree.children)
        negate = len(children) == 4
        series, kind = self.column(children[0])
        if kind == "number":
            name = str(children[0].children[0])
            raise _never(self.text, name, str(children[-2]), children[-1],
                         f"{children[-2]} matches strings, "
                         f"and {name} is a number; compare it with = < > and a number")
        pattern = _like_pattern(_unquote(str(children[-1])),
                                str(children[-2]).lower() == "ilike")
        if kind == "text":
            known = series.notna().to_numpy(bool)
            values = param_strings(series)
        else:
            known = _strings(series)
            values = series.where(known, "").astype(str)
        hits = values.str.match(pattern).fillna(False).to_numpy(bool)
        out = self._masked(hits & known, known)
        return ~out if negate else out

    def isin(self, tree: Any) -> pd.Series:
        children = list(tree.children)
        negate = getattr(children[1], "type", None) == "NEGATE"
        series, kind = self.column(children[0])
        trees = children[2 if negate else 1:]
        self._check(kind, children[0], trees, "in")
        values = [_literal(v) for v in trees]
        known = series.notna().to_numpy(bool)
        strings = {v for v in values if isinstance(v, str)}
        numbers = {v for v in values if _is_number(v)}
        shown = param_strings(series) if kind == "text" else series

        def hit(v: Any, s: Any) -> bool:
            if isinstance(s, str) and s in strings:
                return True
            if isinstance(v, bool):
                return False
            return (_number(v) if isinstance(v, str) else v) in numbers

        out = self._masked([hit(v, s) for v, s in zip(series, shown, strict=True)], known)
        return ~out if negate else out

    def isnull(self, tree: Any) -> pd.Series:
        import pandas as pd

        children = list(tree.children)
        nulls = self.column(children[0])[0].isna()
        result = ~nulls if len(children) == 2 else nulls
        return pd.Series(pd.array(result.to_numpy(bool), dtype="boolean"),
                         index=self.frame.index)


def param_string(value: Any) -> str:
    """MLflow's string of a logged param value: what ``str(value)`` gives in Python."""
    import numpy as np

    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(float(value))
    return str(value)


def param_strings(series: pd.Series) -> pd.Series:
    """Each value of ``series`` as MLflow's string of it (missing values stay missing)."""
    import pandas as pd

    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series
    return series.map(lambda v: None if v is None or v is pd.NA or
                      (isinstance(v, float) and v != v) else param_string(v)).astype(object)


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


def apply_filter(frame: pd.DataFrame, text: str | None,
                 attributes: Attributes) -> pd.DataFrame:
    """The rows of ``frame`` for which the filter ``text`` is true (unknown: excluded)."""
    if not text or not text.strip():
        return frame
    tree = parse(text)
    if len(frame) == 0:
        _check_columns(tree, attributes, text, frame)
        return frame
    mask = _Evaluator(frame, attributes, text)(tree)
    return frame[mask.fillna(False).to_numpy(bool)]


def _check_columns(tree: Any, attributes: Attributes, text: str, frame: pd.DataFrame) -> None:
    """What evaluation would refuse, on an empty frame: unknown columns, impossible types."""
    evaluator = _Evaluator(frame, attributes, text)
    for sub in tree.iter_subtrees():
        if sub.data in ("compare", "like", "isin"):
            evaluator(sub)
        elif sub.data == "column":
            column_name(sub.children[0], attributes, text)


def _sort_keys(series: pd.Series, ascending: bool, nan: Any) -> list[np.ndarray]:
    """Two lexsort keys for one ``order_by`` column: values (0), NaN (1), missing (2), in
    both directions, as MLflow orders; then the values, as numbers when every value is a
    number or a numeric string, else as MLflow's strings of them."""
    import numpy as np

    missing = series.isna().to_numpy(bool)
    if nan is None and series.dtype == object:  # a float NaN among Nones: a stored NaN
        nan = series.map(lambda v: isinstance(v, float) and v != v).to_numpy(bool)
    is_nan = missing & (np.zeros(len(series), bool) if nan is None else np.asarray(nan, bool))
    missing = missing & ~is_nan
    present = ~(missing | is_nan)
    first = series[present].iloc[0] if present.any() else None
    words = isinstance(first, str) and _number(first) is None  # then no parse of them all
    numbers = np.zeros(len(series)) if words else _numbers(series).to_numpy(float)
    if words or np.isnan(numbers[present]).any():
        import pandas as pd  # some value is not a number: sort the strings

        shown = param_strings(series)[present]
        numbers = np.zeros(len(series))
        numbers[present] = pd.factorize(shown.astype(str), sort=True)[0]
    values = np.where(present, numbers, 0.0)
    return [np.where(missing, 2, np.where(is_nan, 1, 0)), values if ascending else -values]


def apply_order(frame: pd.DataFrame, order_by: list[str] | str | None,
                attributes: Attributes, nan: pd.DataFrame | None = None) -> pd.DataFrame:
    """``frame`` sorted by ``["metrics.rmse asc", "label desc", ...]``, stably: missing
    values last and NaN just before them, in either direction (MLflow's order).

    ``nan`` (optional, same index as ``frame``): for a float column, whose NaN cannot say
    whether a value was logged, True where the value is a stored NaN rather than missing.
    Without it, a float NaN is missing unless it sits in an object column.
    """
    import numpy as np

    if not order_by:
        return frame
    if isinstance(order_by, str):
        order_by = [order_by]
    keys: list[np.ndarray] = []
    for item in order_by:
        tree = parse(item.strip(), start="order")
        name = column_name(tree.children[0].children[0], attributes, item.strip())
        ascending = len(tree.children) < 2 or str(tree.children[1]).lower() == "asc"
        if len(frame) == 0:
            continue
        if name not in frame.columns:
            keys.append(np.zeros(len(frame)))
            continue
        flags = None
        if nan is not None and name in nan.columns:
            flags = nan[name].reindex(frame.index).fillna(False).to_numpy(bool)
        keys.extend(_sort_keys(frame[name], ascending, flags))
    if not keys:
        return frame
    return frame.iloc[np.lexsort(keys[::-1])]
