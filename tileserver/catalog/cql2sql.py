"""CQL2 filters (text or JSON) compiled to SQL: SQLite's (`images`) or PostgreSQL's (pgSTAC).

Parsing is the `cql2` package's; this module only turns its CQL2-JSON tree into a SQL
boolean with parameters, in one of two dialects that differ only in spelling: both read
the same values (queryables.py) and give the same answers. In SQLite, spatial operators
get an R*Tree bbox prefilter and an exact shapely check (a SQL function), so answers are
exact and still use the index; PostgreSQL's store decides them with the same shapely
predicates (pgstac.py).

Semantics follow `cql2`'s own evaluator (`Expr.matches`) where it has an answer: NULL (a
missing or null value) makes a predicate unknown, as in SQL. Times compare as fixed-width
UTC text, so every time literal is normalized here; a time compared with a DATE is
compared with that UTC day. Values are bound as `?` parameters: the SQL text only holds
operators, function names and the queryables' own SQL.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any, Literal

import cql2
import shapely
from shapely.geometry import shape

from tileserver.catalog.geojson import geometry_problem
from tileserver.catalog.models import sortable_time
from tileserver.limits import parenthesis_depth

QueryableType = Literal[
    "string", "number", "integer", "boolean", "datetime", "array", "geometry", "object"
]

LANGS = ("cql2-text", "cql2-json")
OPEN_START = ""  # an interval's open start ('..'): sorts below every timestamp text
OPEN_END = "~"  # an open end: sorts above every timestamp text
# Size limits, checked before anything recurses over a filter (cql2's parsers are recursive
# and overflow the stack, killing the process, near 2,000 nested parentheses or 10,000
# chained operators; Python's recursion limit is 1,000).
MAX_FILTER_DEPTH = 32  # nested JSON objects and arrays in the tree; parentheses in cql2-text
MAX_FILTER_NODES = 10_000  # values in the tree (a geometry literal is one): bounds SQL parameters
MAX_TEXT_OPERATORS = 256  # NOT and arithmetic operators in cql2-text: one recursion level each
# characters in one string literal: a LIKE costs at worst len(value) x len(pattern) steps
MAX_FILTER_STRING = 1024


class FilterError(ValueError):
    """A malformed filter, or one naming an unknown property; the message says which."""


@dataclass(frozen=True)
class Queryable:
    """A property a filter may name, and the SQL that yields it for a row of `images i`.

    `datetime` queryables yield fixed-width UTC text (models.sortable_time) so SQL
    compares them as time. The `geometry` queryable yields WKB and names the R*Tree
    (`rtree` table, keyed by `images.rowid`) used to prefilter spatial operators.
    """

    name: str
    type: QueryableType
    sql: str
    description: str = ""
    rtree: str | None = None


# --------------------------------------------------------------------------- parsing


def parse_filter(value: str | bool | Mapping[str, Any], lang: str | None = None) -> dict | bool:
    """The filter as a CQL2-JSON dict, whatever form it came in; FilterError if malformed."""
    if lang is None:
        is_text = isinstance(value, str) and not value.lstrip().startswith("{")
        lang = "cql2-text" if is_text else "cql2-json"
    if lang not in LANGS:
        raise FilterError(f"unknown filter-lang '{lang}'; use one of: {', '.join(LANGS)}")
    try:
        if lang == "cql2-text":
            if not isinstance(value, str):
                raise FilterError("a cql2-text filter must be a string")
            _check_text(value)
            expr = cql2.parse_text(value)
        else:
            if isinstance(value, str):
                value = _json_filter(value)
            if not isinstance(value, Mapping | bool):
                raise FilterError("a cql2-json filter must be a JSON object or its text")
            _check_tree(value)
            value = _args_as_lists(value)
            expr = cql2.parse_json(json.dumps(value))  # a bare true/false is a filter too
        tree = expr.to_json()
        _check_tree(tree)
        sent = _text_numbers(value) if lang == "cql2-text" else _numbers(value)
        tree = _exact_numbers(tree, sent)
        problem = _validation_problem(json.dumps(tree, sort_keys=True))
    except FilterError:
        raise
    except Exception as exc:  # cql2.ParseError, bad JSON values
        problem = str(exc)
    if problem is not None:
        raise FilterError(f"invalid {lang} filter: {problem}")
    return tree


def _json_filter(text: str) -> Any:
    """cql2-json text read by Python (exact numbers); nesting is checked after."""
    try:
        return json.loads(text)
    except RecursionError:
        raise FilterError(f"filter nests deeper than {MAX_FILTER_DEPTH} levels") from None
    except ValueError as exc:
        raise FilterError(f"invalid cql2-json filter: {exc}") from None


def _args_as_lists(tree: Any) -> Any:
    """A tree whose operations' `args` are lists: a single operand object becomes [operand].

    UP42's storage API documents `{"op": "isNull", "args": {"property": "tags"}}`.
    """
    if isinstance(tree, Mapping):
        fixed = {k: _args_as_lists(v) for k, v in tree.items()}
        if "op" in fixed and isinstance(fixed.get("args"), Mapping):
            fixed["args"] = [fixed["args"]]
        return fixed
    if isinstance(tree, list):
        return [_args_as_lists(v) for v in tree]
    return tree


def _numbers(tree: Any) -> list[float]:
    """The numbers of a JSON tree in document order (booleans are not numbers)."""
    found: list[float] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            pending.extend(reversed(list(node.values())))
        elif isinstance(node, list | tuple):
            pending.extend(reversed(node))
        elif isinstance(node, int | float) and not isinstance(node, bool):
            found.append(float(node))
    return found


_TEXT_NUMBER = re.compile(r"(?<![\w.])(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def _text_numbers(text: str) -> list[float]:
    """The unsigned numbers of a cql2-text filter in order (quoted text left out)."""
    return [float(n) for n in _TEXT_NUMBER.findall(_QUOTED.sub("''", text))]


def _exact_numbers(parsed: Any, numbers: list[float]) -> Any:
    """cql2's tree with the numbers of the filter as sent.

    cql2 reads JSON numbers through serde_json and WKT coordinates with its own parser,
    which can land on a neighbouring double for 17 significant digits (7.3999999999999995
    became 7.4); Python reads them exactly. cql2 keeps the operands' order (it may regroup
    and/or), so numbers pair up in order; a sign may be an operator in text.
    """
    sent = iter(numbers)
    pending_number = next(sent, None)

    def fix(node: Any) -> Any:
        nonlocal pending_number
        if isinstance(node, dict):
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        if isinstance(node, bool) or not isinstance(node, int | float) or pending_number is None:
            return node
        size = abs(pending_number)
        if abs(abs(node) - size) <= size * 1e-15:
            if isinstance(node, float) and math.isfinite(size):
                node = math.copysign(size, node)
            pending_number = next(sent, None)
        return node

    return fix(parsed)


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")  # literals, quoted names
_NESTING_OPERATORS = re.compile(r"[-+*/%^]|\b(?:NOT|DIV)\b", re.IGNORECASE)


def _check_text(text: str) -> None:
    """FilterError when cql2-text nests parentheses or chains operators beyond the limits."""
    bare = _QUOTED.sub("''", text)
    if parenthesis_depth(bare) > MAX_FILTER_DEPTH:
        raise FilterError(f"filter nests parentheses deeper than {MAX_FILTER_DEPTH} levels")
    if len(_NESTING_OPERATORS.findall(bare)) > MAX_TEXT_OPERATORS:
        raise FilterError(f"filter has more than {MAX_TEXT_OPERATORS} NOT or arithmetic operators")


def _check_tree(tree: Any) -> None:
    """FilterError when a CQL2-JSON tree is deeper or larger than the limits (no recursion)."""
    pending, nodes = [(tree, 1)], 0
    while pending:
        node, depth = pending.pop()
        nodes += 1
        if nodes > MAX_FILTER_NODES:
            raise FilterError(f"filter has more than {MAX_FILTER_NODES} values")
        if depth > MAX_FILTER_DEPTH:
            raise FilterError(f"filter nests deeper than {MAX_FILTER_DEPTH} levels")
        if isinstance(node, str) and len(node) > MAX_FILTER_STRING:
            raise FilterError(
                f"filter has a string of {len(node)} characters, more than {MAX_FILTER_STRING}"
            )
        if _is_geometry_literal(node):
            _check_geometry_literal(node)
        elif isinstance(node, Mapping):
            pending.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list | tuple):
            pending.extend((child, depth + 1) for child in node)


def _check_geometry_literal(node: Mapping) -> None:
    """FilterError when a geometry literal is deeper or larger than geojson's limits."""
    if "bbox" in node:
        box = node["bbox"]
        if not isinstance(box, list | tuple) or len(box) not in (4, 6):
            raise FilterError("a bbox in a filter has 4 or 6 numbers")
        return
    problem = geometry_problem(node)
    if problem is not None:
        raise FilterError(f"filter geometry {problem}")


@lru_cache(maxsize=1024)
def _validation_problem(canonical: str) -> str | None:
    """cql2's schema check of a CQL2-JSON text, cached: cql2 builds a validator per call."""
    try:
        cql2.parse_json(canonical).validate()
    except Exception as exc:  # cql2.ValidationError
        return str(exc)
    return None


# --------------------------------------------------------------------------- SQL pieces


@dataclass(frozen=True)
class _Sql:
    """A piece of SQL and the parameters its `?` take, in order."""

    sql: str
    params: tuple = ()


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _render(template: str, **parts: _Sql) -> _Sql:
    """Fill `{name}` slots with SQL pieces, keeping their parameters in text order."""
    params: list = []

    def fill(match: re.Match) -> str:
        part = parts[match.group(1)]
        params.extend(part.params)
        return part.sql

    return _Sql(_PLACEHOLDER.sub(fill, template), tuple(params))


def _param(value: Any) -> _Sql:
    """A bound value (compile_filter spells booleans as the dialect stores them)."""
    return _Sql("?", (value,))


def _join(separator: str, parts: list[_Sql]) -> _Sql:
    """SQL pieces joined, parameters concatenated."""
    return _Sql(separator.join(p.sql for p in parts), tuple(x for p in parts for x in p.params))


@dataclass(frozen=True)
class Dialect:
    """How one database spells what the compiler emits (templates fill `{a}`, `{b}`...).

    `spatial`, when set, builds the SQL of `predicate(row geometry, literal)` for a
    geometry queryable (SQLite's R*Tree and shapely function are the default).
    """

    name: str
    arithmetic: Mapping[str, str]
    text_functions: Mapping[str, str]
    like: str
    array: str
    array_literal: str
    spatial: Callable[[str, Queryable, shapely.Geometry], _Sql] | None = None


@dataclass(frozen=True)
class _Context:
    """What compiling needs besides the node: the queryables, the dialect, under a NOT."""

    queryables: Mapping[str, Queryable]
    dialect: Dialect
    negated: bool = False


# --------------------------------------------------------------------------- time


def _parse_time(text: str) -> datetime:
    """A time as cql2 reads one: RFC 3339, or a year, month or day (its start); naive = UTC."""
    value = text.strip()
    if len(value) == 4:
        value += "-01-01"
    elif len(value) == 7:
        value += "-01"
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), time.min)
    return datetime.fromisoformat(value.replace("z", "Z"))


def _time_text(value: Any, what: str = "timestamp") -> str:
    """A time literal as the fixed-width UTC text datetime queryables yield."""
    try:
        if not isinstance(value, str):
            raise TypeError(value)
        return sortable_time(_parse_time(value))
    except (TypeError, ValueError):
        raise FilterError(f"{value!r} is not a {what} (RFC 3339 expected)") from None


def _day_text(value: Any) -> tuple[str, str]:
    """A DATE as the range of its UTC day: first and last microsecond."""
    try:
        day = date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise FilterError(f"{value!r} is not a date (YYYY-MM-DD expected)") from None
    return (
        sortable_time(datetime.combine(day, time.min)),
        sortable_time(datetime.combine(day, time.max)),
    )


# --------------------------------------------------------------------------- operands

ARITHMETIC = {
    "+": "({a} + {b})",
    "-": "({a} - {b})",
    "*": "({a} * {b})",
    "/": "(CAST({a} AS REAL) / {b})",
    "%": "cql2_mod({a}, {b})",
    "div": "cql2_div({a}, {b})",
    "^": "cql2_pow({a}, {b})",
}
TEXT_FUNCTIONS = {"casei": "cql2_casei({a})", "accenti": "cql2_accenti({a})"}
SQLITE = Dialect(
    name="sqlite",
    arithmetic=ARITHMETIC,
    text_functions=TEXT_FUNCTIONS,
    like="cql2_like({a}, {b})",
    array="cql2_array({op}, {a}, {b})",
    array_literal="?",
)
# PostgreSQL: numbers are float8 (as SQLite's REAL), functions live in the tileserver
# schema (pgstac.FUNCTIONS) and behave as the Python ones registered in SQLite below
POSTGRES = Dialect(
    name="postgres",
    arithmetic={
        **{op: ARITHMETIC[op] for op in "+-*"},
        "/": "tileserver.cql2_divide({a}, {b})",
        "%": "tileserver.cql2_mod({a}, {b})",
        "div": "tileserver.cql2_intdiv({a}, {b})",
        "^": "tileserver.cql2_pow({a}, {b})",
    },
    text_functions={
        "casei": "tileserver.cql2_casei({a})",
        "accenti": "tileserver.cql2_accenti({a})",
    },
    like="tileserver.cql2_like({a}, {b})",
    array="tileserver.cql2_array({op}, {a}, {b})",
    array_literal="?::jsonb",
)
COMPARISONS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">="}


def _op(node: Mapping) -> str:
    """An operation's name, lower-cased (cql2 spells `isNull` and `a_containedBy`)."""
    return str(node.get("op", "")).lower()


def _args(node: Mapping) -> list:
    """An operation's arguments."""
    args = node.get("args", [])
    return list(args) if isinstance(args, list | tuple) else [args]


def _queryable(node: Mapping, ctx: _Context) -> Queryable:
    """The queryable a `{"property": name}` names; FilterError if there is none."""
    name = node["property"]
    found = ctx.queryables.get(name)
    if found is None:
        names = ", ".join(sorted(ctx.queryables))
        raise FilterError(f"unknown property '{name}' in filter; queryables: {names}")
    return found


def _is_geometry_literal(node: Any) -> bool:
    """Whether a node is a GeoJSON geometry or a bbox."""
    return isinstance(node, Mapping) and ("bbox" in node or "type" in node)


def _kind(node: Any, ctx: _Context) -> str:
    """What a node yields (`text`: a string literal, which may also be read as a time)."""
    if isinstance(node, bool):
        return "boolean"
    if isinstance(node, int | float):
        return "number"
    if isinstance(node, str):
        return "text"
    if node is None:
        return "null"
    if isinstance(node, list | tuple):
        return "array"
    if isinstance(node, Mapping):
        if "property" in node:
            kind = _queryable(node, ctx).type
            return "number" if kind == "integer" else kind
        for key in ("timestamp", "date", "interval"):
            if key in node:
                return key
        if _is_geometry_literal(node):
            return "geometry"
        if "op" in node:
            op = _op(node)
            if op in ARITHMETIC:
                return "number"
            return "string" if op in TEXT_FUNCTIONS else "boolean"
    raise FilterError(f"unsupported filter value {node!r}")


def _describe(node: Any, ctx: _Context) -> str:
    """A node as an error message names it."""
    if isinstance(node, Mapping) and "property" in node:
        return f"property '{node['property']}' ({_queryable(node, ctx).type})"
    if isinstance(node, Mapping) and "op" in node:
        return f"the result of '{node['op']}'"
    kind = _kind(node, ctx)
    return f"{'string' if kind == 'text' else kind} literal {json.dumps(node)}"


def _need(op: str, node: Any, ctx: _Context, kinds: set[str], what: str) -> None:
    """FilterError naming the operator and operand unless the operand is of one of `kinds`."""
    if _kind(node, ctx) not in kinds | {"null"}:
        raise FilterError(f"'{op}' needs {what}, not {_describe(node, ctx)}")


def _value(node: Any, ctx: _Context, as_time: bool = False) -> _Sql:
    """A scalar operand; string literals become timestamp text when `as_time`."""
    if isinstance(node, list | tuple) or _is_geometry_literal(node):
        raise FilterError(f"{_describe(node, ctx)} is not a single value")
    if node is None:
        return _Sql("NULL")
    if isinstance(node, str):
        return _param(_time_text(node) if as_time else node)
    if not isinstance(node, Mapping):
        return _param(node)
    if "property" in node:
        return _Sql(_queryable(node, ctx).sql)
    if "timestamp" in node:
        return _param(_time_text(node["timestamp"]))
    if "date" in node:
        return _param(_day_text(node["date"])[0])
    if "interval" in node:
        raise FilterError("an interval is only an operand of a temporal operator")
    op = _op(node)
    if op in ARITHMETIC:
        return _arithmetic(op, _args(node), ctx)
    if op in TEXT_FUNCTIONS:
        _arity(op, _args(node), 1)
        _need(op, _args(node)[0], ctx, {"string", "text"}, "a string")
        return _render(ctx.dialect.text_functions[op], a=_value(_args(node)[0], ctx))
    return _boolean(node, ctx)


def _arithmetic(op: str, args: list, ctx: _Context) -> _Sql:
    """`+ - * / % div ^`, left to right; `/` is real division as in CQL2."""
    if len(args) < 2:
        raise FilterError(f"'{op}' needs two operands")
    for arg in args:
        _need(op, arg, ctx, {"number"}, "numbers")
    result = _value(args[0], ctx)
    for arg in args[1:]:
        result = _render(ctx.dialect.arithmetic[op], a=result, b=_value(arg, ctx))
    return result


# --------------------------------------------------------------------------- predicates


def _boolean(node: Any, ctx: _Context) -> _Sql:
    """A predicate: the SQL boolean for a CQL2-JSON node."""
    if isinstance(node, bool):
        return _param(node)
    if not isinstance(node, Mapping):
        raise FilterError(f"{_describe(node, ctx)} is not a predicate")
    if "property" in node:
        _need("filter", node, ctx, {"boolean"}, "a boolean")
        return _Sql(_queryable(node, ctx).sql)
    if "op" not in node:
        raise FilterError(f"{_describe(node, ctx)} is not a predicate")
    op, args = _op(node), _args(node)
    if op in ("and", "or"):
        if not args:
            raise FilterError(f"'{op}' needs operands")
        return _render("({x})", x=_join(f" {op.upper()} ", [_boolean(a, ctx) for a in args]))
    if op == "not":
        _arity(op, args, 1)
        inner = _Context(ctx.queryables, ctx.dialect, not ctx.negated)
        return _render("(NOT {x})", x=_boolean(args[0], inner))
    if op == "isnull":
        _arity(op, args, 1)
        return _render("({x} IS NULL)", x=_value(args[0], ctx))
    handler = _PREDICATES.get(op) or _PREDICATES.get(op[:2])
    if handler is None:
        raise FilterError(f"unsupported operator '{node['op']}' in filter")
    return handler(op, args, ctx)


def _arity(op: str, args: list, count: int) -> None:
    """FilterError unless an operation has `count` operands."""
    if len(args) != count:
        raise FilterError(f"'{op}' needs {count} operand(s), got {len(args)}")


SCALAR_KINDS = {"number", "string", "text", "boolean", "datetime", "timestamp", "date", "null"}
TIME_KINDS = {"datetime", "timestamp", "date"}


def _family(kind: str) -> str:
    """Kinds that compare with each other share a family."""
    return {"text": "string", "timestamp": "datetime", "date": "datetime"}.get(kind, kind)


def _comparable(op: str, args: list, ctx: _Context) -> bool:
    """Check operands compare (FilterError naming them if not); True if they are times."""
    kinds = [_kind(a, ctx) for a in args]
    for arg, kind in zip(args, kinds, strict=True):
        if kind not in SCALAR_KINDS:
            raise FilterError(f"'{op}' cannot compare {_describe(arg, ctx)}")
    timed = any(_family(k) == "datetime" for k in kinds)
    if timed:  # string literals are read as times
        agree = all(k in TIME_KINDS | {"text", "null"} for k in kinds)
    else:
        agree = len({_family(k) for k in kinds} - {"null"}) <= 1
    if not agree:
        described = " with ".join(_describe(a, ctx) for a in args)
        raise FilterError(f"'{op}' cannot compare {described}")
    return timed


# A time against a DATE compares with the day: `=` is "during that UTC day", `<` "before
# it", `<=` "before its end" and so on. (cql2's evaluator agrees for times at midnight and
# has no answer for other times.)
DAY_COMPARISONS = {
    "=": "({x} >= {start} AND {x} <= {end})",
    "<>": "(NOT ({x} >= {start} AND {x} <= {end}))",
    "<": "({x} < {start})",
    "<=": "({x} <= {end})",
    ">": "({x} > {end})",
    ">=": "({x} >= {start})",
}
MIRRORED = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "<>": "<>"}


def _comparison(op: str, args: list, ctx: _Context) -> _Sql:
    """`= <> < > <= >=`; times compare as UTC text, a time with a DATE as with its day."""
    _arity(op, args, 2)
    symbol = COMPARISONS[op]
    timed = _comparable(op, args, ctx)
    dates = [_kind(a, ctx) == "date" for a in args]
    if dates[0] != dates[1]:
        x, day = (args[1], args[0]) if dates[0] else args
        start, end = _day_text(day["date"])
        return _render(
            DAY_COMPARISONS[MIRRORED[symbol] if dates[0] else symbol],
            x=_value(x, ctx, as_time=True),
            start=_param(start),
            end=_param(end),
        )
    a, b = (_value(arg, ctx, as_time=timed) for arg in args)
    return _render(f"({{a}} {symbol} {{b}})", a=a, b=b)


def _like(op: str, args: list, ctx: _Context) -> _Sql:
    """`like`, case-sensitive with `%`, `_` and `\\` escapes (SQLite LIKE ignores case)."""
    _arity(op, args, 2)
    _need(op, args[0], ctx, {"string", "text"}, "a string")
    _need(op, args[1], ctx, {"string", "text"}, "a string pattern")
    a, b = (_value(arg, ctx) for arg in args)
    return _render(ctx.dialect.like, a=a, b=b)


def _between(op: str, args: list, ctx: _Context) -> _Sql:
    """`between`, inclusive; a DATE bound counts its whole day."""
    if len(args) == 2 and isinstance(args[1], list | tuple):
        args = [args[0], *args[1]]
    _arity(op, args, 3)
    timed = _comparable(op, args, ctx)
    x, low, high = args
    low_sql = _range(op, low, ctx)[0] if timed else _value(low, ctx)
    high_sql = _range(op, high, ctx)[1] if timed else _value(high, ctx)
    return _render(
        "({x} BETWEEN {low} AND {high})", x=_value(x, ctx, timed), low=low_sql, high=high_sql
    )


def _in(op: str, args: list, ctx: _Context) -> _Sql:
    """`in` a list of values (a DATE element matches its whole day, as with `=`)."""
    _arity(op, args, 2)
    x, values = args
    if not isinstance(values, list | tuple):
        raise FilterError(f"'in' needs a list of values, not {_describe(values, ctx)}")
    if not values:
        return _param(False)
    timed = any([_comparable(op, [x, v], ctx) for v in values])
    if timed and any(_kind(v, ctx) == "date" for v in values):
        return _render("({x})", x=_join(" OR ", [_comparison("=", [x, v], ctx) for v in values]))
    items = _join(", ", [_value(v, ctx, timed) for v in values])
    return _render("({x} IN ({items}))", x=_value(x, ctx, timed), items=items)


# --------------------------------------------------------------------------- arrays


def _array(op: str, args: list, ctx: _Context) -> _Sql:
    """`a_contains a_containedby a_overlaps a_equals`, on JSON text, in one SQL function."""
    if op not in ARRAY_OPS:
        raise FilterError(f"unsupported operator '{op}' in filter")
    _arity(op, args, 2)
    parts = []
    for arg in args:
        _need(op, arg, ctx, {"array"}, "an array property or a list")
        if isinstance(arg, list | tuple):
            if any(isinstance(v, Mapping | list | tuple) for v in arg):
                raise FilterError(f"'{op}' takes a list of plain values, not {json.dumps(arg)}")
            literal = _param(json.dumps(list(arg)))
            parts.append(_Sql(ctx.dialect.array_literal, literal.params))
        else:
            parts.append(_value(arg, ctx))
    return _render(ctx.dialect.array, op=_param(op), a=parts[0], b=parts[1])


def _element_key(value: Any) -> tuple:
    """An array element as a set member: 1 and 1.0 alike, 1 and '1' and true apart."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    return ("j", json.dumps(value, sort_keys=True))


ARRAY_OPS: dict[str, Callable[[set, set], bool]] = {
    "a_contains": lambda a, b: a >= b,
    "a_containedby": lambda a, b: a <= b,
    "a_overlaps": lambda a, b: bool(a & b),
    "a_equals": lambda a, b: a == b,
}


def _sql_array(op: str, left: Any, right: Any) -> int | None:
    """SQL `cql2_array(op, a, b)`: the array relation between two JSON arrays (NULL: unknown)."""
    try:
        a, b = json.loads(left), json.loads(right)
        if not isinstance(a, list) or not isinstance(b, list):
            return None
        return int(ARRAY_OPS[op]({_element_key(v) for v in a}, {_element_key(v) for v in b}))
    except (TypeError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- space

SPATIAL_OPS = {
    "s_intersects": "intersects",
    "s_contains": "contains",
    "s_crosses": "crosses",
    "s_disjoint": "disjoint",
    "s_equals": "equals",
    "s_overlaps": "overlaps",
    "s_touches": "touches",
    "s_within": "within",
}
CONVERSE = {"contains": "within", "within": "contains"}  # P(a, b) == CONVERSE[P](b, a)


def _literal_geometry(op: str, node: Any) -> shapely.Geometry:
    """A GeoJSON geometry or `{"bbox": [...]}` (4 or 6 numbers) as shapely."""
    try:
        if "bbox" in node:
            box = [float(v) for v in node["bbox"]]
            if len(box) == 6:
                box = [box[0], box[1], box[3], box[4]]
            if len(box) != 4:
                raise ValueError("a bbox has 4 or 6 numbers")
            return shapely.box(*box)
        return shape(node)
    except Exception as exc:
        raise FilterError(f"'{op}' got an invalid geometry {json.dumps(node)}: {exc}") from None


def _spatial(op: str, args: list, ctx: _Context) -> _Sql:
    """`s_*`: an R*Tree bbox prefilter and the exact shapely predicate (a SQL function).

    The prefilter is left out for `s_disjoint` and under a NOT, where it cannot use the
    index and would make rows without a footprint match instead of being unknown.
    """
    if op not in SPATIAL_OPS:
        raise FilterError(f"unsupported operator '{op}' in filter")
    _arity(op, args, 2)
    predicate = SPATIAL_OPS[op]
    for arg in args:
        _need(op, arg, ctx, {"geometry"}, "the geometry property or a geometry")
    literals = [_is_geometry_literal(a) for a in args]
    if all(literals):
        a, b = (_literal_geometry(op, arg) for arg in args)
        return _param(bool(getattr(shapely, predicate)(a, b)))
    if not any(literals):
        raise FilterError(f"'{op}' needs a geometry literal besides the property")
    prop, literal = (args[1], args[0]) if literals[0] else (args[0], args[1])
    if literals[0]:
        predicate = CONVERSE.get(predicate, predicate)
    queryable = _queryable(prop, ctx)
    geometry = _literal_geometry(op, literal)
    if ctx.dialect.spatial is not None:
        return ctx.dialect.spatial(predicate, queryable, geometry)
    exact = _render(
        "cql2_spatial({op}, {row}, {literal})",
        op=_param(predicate),
        row=_Sql(queryable.sql),
        literal=_param(shapely.to_wkb(geometry)),
    )
    if predicate == "disjoint" or ctx.negated or queryable.rtree is None or geometry.is_empty:
        return exact
    minx, miny, maxx, maxy = geometry.bounds
    rtree = '"' + queryable.rtree.replace('"', '""') + '"'
    prefilter = _Sql(
        f"i.rowid IN (SELECT id FROM {rtree}"
        " WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?)",
        (maxx, minx, maxy, miny),
    )
    return _render("({prefilter} AND {exact})", prefilter=prefilter, exact=exact)


@lru_cache(maxsize=256)
def _prepared(wkb: bytes, thread: int) -> shapely.Geometry:
    """A literal geometry parsed and prepared once (per thread: GEOS prepares lazily)."""
    geometry = shapely.from_wkb(wkb)
    shapely.prepare(geometry)
    return geometry


def _sql_spatial(predicate: str, row: Any, literal: Any) -> int | None:
    """SQL `cql2_spatial(p, row_wkb, literal_wkb)`: p(row, literal) (NULL: no footprint)."""
    if row is None or literal is None:
        return None
    try:
        prepared = _prepared(bytes(literal), threading.get_ident())
        test = getattr(shapely, CONVERSE.get(predicate, predicate))
        return int(test(prepared, shapely.from_wkb(bytes(row))))
    except Exception:  # a bad footprint or predicate name: unknown, not a failed query
        return None


# --------------------------------------------------------------------------- time ops

TEMPORAL_OPS = {
    "t_before": "({ea} < {sb})",
    "t_after": "({sa} > {eb})",
    "t_meets": "({ea} = {sb})",
    "t_metby": "({sa} = {eb})",
    "t_overlaps": "({sa} < {sb} AND {ea} > {sb} AND {ea} < {eb})",
    "t_overlappedby": "({sa} > {sb} AND {sa} < {eb} AND {ea} > {eb})",
    "t_starts": "({sa} = {sb} AND {ea} < {eb})",
    "t_startedby": "({sa} = {sb} AND {ea} > {eb})",
    "t_during": "({sa} > {sb} AND {ea} < {eb})",
    "t_contains": "({sa} < {sb} AND {ea} > {eb})",
    "t_finishes": "({sa} > {sb} AND {ea} = {eb})",
    "t_finishedby": "({sa} < {sb} AND {ea} = {eb})",
    "t_equals": "({sa} = {sb} AND {ea} = {eb})",
    "t_intersects": "({sa} <= {eb} AND {ea} >= {sb})",
    "t_disjoint": "(NOT ({sa} <= {eb} AND {ea} >= {sb}))",
}


def _bound(op: str, node: Any, ctx: _Context, end: bool) -> _Sql:
    """One end of an INTERVAL: '..' is open (a sentinel below or above every time)."""
    if node is None or node == "..":
        return _param(OPEN_END if end else OPEN_START)
    if isinstance(node, Mapping) and "date" in node:
        return _param(_day_text(node["date"])[int(end)])
    _need(op, node, ctx, {"datetime", "timestamp", "text"}, "a time")
    return _value(node, ctx, as_time=True)


def _range(op: str, node: Any, ctx: _Context) -> tuple[_Sql, _Sql]:
    """A temporal operand as (start, end) SQL; an instant is [t, t]."""
    if isinstance(node, Mapping) and "interval" in node:
        ends = node["interval"]
        if not isinstance(ends, list | tuple) or len(ends) != 2:
            raise FilterError(f"an interval has two ends, not {json.dumps(ends)}")
        return _bound(op, ends[0], ctx, False), _bound(op, ends[1], ctx, True)
    if isinstance(node, Mapping) and "date" in node:
        start, end = _day_text(node["date"])
        return _param(start), _param(end)
    _need(op, node, ctx, {"datetime", "timestamp", "text"}, "a time or an interval")
    instant = _value(node, ctx, as_time=True)
    return instant, instant


def _temporal(op: str, args: list, ctx: _Context) -> _Sql:
    """`t_*`: Allen's interval relations over (start, end) UTC text, as OGC CQL2 defines."""
    if op not in TEMPORAL_OPS:
        raise FilterError(f"unsupported operator '{op}' in filter")
    _arity(op, args, 2)
    (sa, ea), (sb, eb) = (_range(op, arg, ctx) for arg in args)
    return _render(TEMPORAL_OPS[op], sa=sa, ea=ea, sb=sb, eb=eb)


_PREDICATES: dict[str, Callable[[str, list, _Context], _Sql]] = {
    **dict.fromkeys(COMPARISONS, _comparison),
    "like": _like,
    "between": _between,
    "in": _in,
    "a_": _array,
    "s_": _spatial,
    "t_": _temporal,
}


def compile_filter(
    expr: Mapping[str, Any] | bool,
    queryables: Mapping[str, Queryable],
    dialect: Dialect = SQLITE,
) -> tuple[str, list]:
    """A SQL boolean expression and its parameters for a CQL2-JSON filter.

    SQLite's placeholders are `?` and its booleans 1/0; PostgreSQL's (psycopg) are `%s`
    and its numbers float8, as its queryables' numbers are.
    """
    if isinstance(expr, Mapping) and "op" not in expr and "property" not in expr:
        raise FilterError(f"a filter is a predicate, not {json.dumps(expr)}")
    compiled = _boolean(expr, _Context(queryables, dialect))
    if dialect.name == "sqlite":
        return compiled.sql, [int(p) if isinstance(p, bool) else p for p in compiled.params]
    params = [float(p) if type(p) is int else p for p in compiled.params]
    return compiled.sql.replace("%", "%%").replace("?", "%s"), params


# --------------------------------------------------------------------------- functions


# A LIKE pattern is matched segment by segment, never by one backtracking regex: `%`
# splits it into segments of literal characters and `_` (one character each), and each
# segment is found at the leftmost place after the previous one (greedy leftmost is exact
# for `%`, which absorbs any run). No segment holds a quantifier, so finding one is at worst
# len(value) x len(segment) steps (in C), and the whole match O(len(value) x len(pattern)),
# where the former regex backtracked exponentially in the number of `%_`.


@lru_cache(maxsize=256)
def _like_segments(pattern: str) -> tuple[tuple[re.Pattern, int], ...]:
    """A CQL2 LIKE pattern split at `%`: each segment as (quantifier-free regex, its length).

    `_` is one character, `\\` escapes the next character (a trailing one is literal).
    Consecutive `%` give empty segments; the first and last segments are anchored.
    """
    segments: list[list[str]] = [[]]
    chars = iter(pattern)
    for char in chars:
        if char == "%":
            segments.append([])
        elif char == "_":
            segments[-1].append(".")
        else:
            literal = next(chars, "\\") if char == "\\" else char
            segments[-1].append(re.escape(literal))
    return tuple((re.compile("".join(s), re.DOTALL), len(s)) for s in segments)


def like_match(value: str, pattern: str) -> bool:
    """Whether `value` matches the CQL2 LIKE `pattern` (case-sensitive), without backtracking."""
    segments = _like_segments(pattern)
    if sum(length for _, length in segments) > len(value):
        return False  # each segment character takes one value character
    first, first_length = segments[0]
    if len(segments) == 1:
        return first_length == len(value) and first.match(value) is not None
    last, last_length = segments[-1]
    end = len(value) - last_length  # where the last segment must start
    if end < first_length or first.match(value) is None or last.match(value, end) is None:
        return False
    position = first_length
    for segment, length in segments[1:-1]:
        if length == 0:
            continue
        found = segment.search(value, position, end)
        if found is None:
            return False
        position = found.end()
    return True


def _sql_like(value: Any, pattern: Any) -> int | None:
    """SQL `cql2_like(value, pattern)`: CQL2 LIKE, case-sensitive (NULL: unknown)."""
    if not isinstance(value, str) or not isinstance(pattern, str):
        return None
    return int(like_match(value, pattern))


def _sql_casei(value: Any) -> Any:
    """SQL `cql2_casei(text)`: lower case, so comparisons ignore case."""
    return value.lower() if isinstance(value, str) else value


def _sql_accenti(value: Any) -> Any:
    """SQL `cql2_accenti(text)`: accents stripped, so comparisons ignore them."""
    if not isinstance(value, str):
        return value
    decomposed = unicodedata.normalize("NFD", value)
    return unicodedata.normalize(
        "NFC", "".join(c for c in decomposed if not unicodedata.combining(c))
    )


def _numeric(function: Callable[[float, float], float]) -> Callable[[Any, Any], Any]:
    """A SQL arithmetic function that yields NULL rather than raising."""

    def call(a: Any, b: Any) -> Any:
        try:
            result = function(float(a), float(b))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        return None if isinstance(result, float) and math.isnan(result) else result

    return call


def _sql_ts_norm(value: Any) -> str | None:
    """SQL `ts_norm(text)`: an RFC 3339 time as fixed-width UTC text (NULL if not one)."""
    if not isinstance(value, str):
        return None
    try:
        return sortable_time(_parse_time(value))
    except ValueError:
        return None


def register_functions(db: sqlite3.Connection) -> None:
    """Install the SQL functions compiled filters call (spatial, array, like, time)."""
    functions: dict[str, tuple[int, Callable]] = {
        "cql2_like": (2, _sql_like),
        "cql2_casei": (1, _sql_casei),
        "cql2_accenti": (1, _sql_accenti),
        "cql2_mod": (2, _numeric(math.fmod)),
        "cql2_div": (2, _numeric(lambda a, b: math.trunc(a / b))),
        "cql2_pow": (2, _numeric(math.pow)),
        "cql2_array": (3, _sql_array),
        "cql2_spatial": (3, _sql_spatial),
        "ts_norm": (1, _sql_ts_norm),
    }
    for name, (arity, function) in functions.items():
        db.create_function(name, arity, function, deterministic=True)
