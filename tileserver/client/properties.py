"""Filters in the Catalog's operator syntax: `properties.cloud_fraction < 0.2`,
`"2024-01-01" <= properties.acquired < "2024-02-01"`, `&`, `|`, `.in_()`, `.like()`.

An expression has three readings: `serialize()` (the Catalog's own dict form, so filters can
be compared with its client's), `cql2()` (CQL2-JSON for the server's STAC search, with the
Catalog's names and units mapped to the server's queryables by a `Fields` table), and
`evaluate()` (a record in hand: product searches, which the server cannot filter).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def parse_time(value: Any) -> dt.datetime:
    """A time as the Catalog takes it (datetime, date, ISO text) as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError(f"{value!r} is not a time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def time_text(value: Any) -> str:
    """A time as RFC 3339 in UTC with a Z, as the server reads timestamps."""
    return parse_time(value).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Field:
    """How one Catalog attribute is searched: the server's queryable, and its value."""

    queryable: str
    convert: Callable[[Any], Any] = lambda v: v
    time: bool = False


@dataclass
class Fields:
    """A record type's attribute names -> server queryables; others pass through."""

    known: dict[str, Field] = field(default_factory=dict)

    def __call__(self, name: str) -> Field:
        """The field named `name` (a known attribute, `properties.x`, or a plain name)."""
        if name in self.known:
            return self.known[name]
        for prefix in ("properties.", "extra_properties."):
            if name.startswith(prefix):
                return Field(name[len(prefix) :])
        return Field(name)


def _literal(spec: Field, value: Any) -> Any:
    if value is None:
        return None
    if spec.time:
        return {"timestamp": time_text(value)}
    return spec.convert(value)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Expression:
    """A filter; combine with `&` and `|`."""

    def __and__(self, other: Expression) -> Expression:
        return AndExpression([*_parts(self, AndExpression), *_parts(other, AndExpression)])

    def __or__(self, other: Expression) -> Expression:
        return OrExpression([*_parts(self, OrExpression), *_parts(other, OrExpression)])

    __rand__ = __and__
    __ror__ = __or__

    def serialize(self) -> dict:  # pragma: no cover - every subclass has one
        """The expression in the Catalog's own JSON form (its `serialize()`)."""
        raise NotImplementedError

    def cql2(self, fields: Fields) -> dict:  # pragma: no cover
        """The expression as CQL2-JSON over the server's queryables."""
        raise NotImplementedError

    def evaluate(self, get: Callable[[str], Any]) -> bool:  # pragma: no cover
        """Whether a record, read through `get(name)`, matches (for local filtering)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.serialize()})"


def _parts(expression: Expression, kind: type) -> list[Expression]:
    if not isinstance(expression, Expression):
        raise TypeError(f"{expression!r} is not a filter expression")
    return list(expression.parts) if type(expression) is kind else [expression]


def _compare(get, name: str, op: str, value: Any) -> bool:
    actual = get(name)
    if actual is None or value is None:
        return False
    if isinstance(actual, dt.datetime | dt.date) or (
        isinstance(value, dt.datetime | dt.date) and isinstance(actual, str)
    ):
        actual, value = parse_time(actual), parse_time(value)
    elif isinstance(actual, str) and isinstance(value, str) and _looks_like_time(actual):
        actual, value = parse_time(actual), parse_time(value)
    return {
        "=": actual == value,
        "<>": actual != value,
        ">": actual > value,
        ">=": actual >= value,
        "<": actual < value,
        "<=": actual <= value,
    }[op]


def _looks_like_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return len(text) >= 10 and text[4] == "-"


class EqExpression(Expression):
    """`name == value` (`value` None: the property is null)."""

    def __init__(self, name: str, value: Any):
        self.name, self.value = name, value

    def serialize(self) -> dict:
        """The Catalog's `eq` form."""
        return {"eq": {self.name: self.value}}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `=`, or `isNull` for None."""
        spec = fields(self.name)
        if self.value is None:
            return {"op": "isNull", "args": [{"property": spec.queryable}]}
        return {"op": "=", "args": [{"property": spec.queryable}, _literal(spec, self.value)]}

    def evaluate(self, get) -> bool:
        """Whether the property equals the value."""
        if self.value is None:
            return get(self.name) is None
        return _compare(get, self.name, "=", self.value)


class NeExpression(EqExpression):
    """`name != value` (`value` None: the property is not null)."""

    def serialize(self) -> dict:
        """The Catalog's `ne` form."""
        return {"ne": {self.name: self.value}}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `<>`, or `not isNull` for None."""
        spec = fields(self.name)
        if self.value is None:
            return {"op": "not", "args": [{"op": "isNull", "args": [{"property": spec.queryable}]}]}
        return {"op": "<>", "args": [{"property": spec.queryable}, _literal(spec, self.value)]}

    def evaluate(self, get) -> bool:
        """Whether the property differs from the value."""
        if self.value is None:
            return get(self.name) is not None
        return _compare(get, self.name, "<>", self.value)


class RangeExpression(Expression):
    """One or both ends of a range (`gt`/`gte` and `lt`/`lte`) on one property."""

    def __init__(self, name: str, parts: Mapping[str, Any]):
        self.name, self.parts_ = name, dict(parts)

    def serialize(self) -> dict:
        """The Catalog's `range` form."""
        return {"range": {self.name: dict(self.parts_)}}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 comparisons joined with `and`."""
        spec = fields(self.name)
        terms = [
            {"op": RANGE_OPS[op], "args": [{"property": spec.queryable}, _literal(spec, value)]}
            for op, value in self.parts_.items()
        ]
        return terms[0] if len(terms) == 1 else {"op": "and", "args": terms}

    def evaluate(self, get) -> bool:
        """Whether the property lies in the range."""
        return all(_compare(get, self.name, RANGE_OPS[op], v) for op, v in self.parts_.items())


class LikeExpression(Expression):
    """A case-insensitive match with `%` (any run) and `_` (one character), as the Catalog's."""

    def __init__(self, name: str, pattern: str):
        self.name, self.value = name, pattern

    def serialize(self) -> dict:
        """The Catalog's `like` form."""
        return {"like": {self.name: self.value}}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `like` on both sides lowered (case-insensitive)."""
        spec = fields(self.name)
        return {
            "op": "like",
            "args": [
                {"op": "casei", "args": [{"property": spec.queryable}]},
                {"op": "casei", "args": [self.value]},
            ],
        }

    def evaluate(self, get) -> bool:
        """Whether the property matches the pattern."""
        import re

        actual = get(self.name)
        if actual is None:
            return False
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in self.value)
        return re.fullmatch(regex, str(actual), re.IGNORECASE | re.DOTALL) is not None


class PrefixExpression(Expression):
    """Text starting with a prefix (case-sensitive)."""

    def __init__(self, name: str, prefix: str):
        self.name, self.value = name, prefix

    def serialize(self) -> dict:
        """The Catalog's `prefix` form."""
        return {"prefix": {self.name: self.value}}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `like` with the prefix escaped and `%` appended."""
        spec = fields(self.name)
        pattern = _like_escape(self.value) + "%"
        return {"op": "like", "args": [{"property": spec.queryable}, pattern]}

    def evaluate(self, get) -> bool:
        """Whether the property starts with the prefix."""
        actual = get(self.name)
        return isinstance(actual, str) and actual.startswith(self.value)


class AndExpression(Expression):
    """All parts hold."""

    def __init__(self, parts: Iterable[Expression]):
        self.parts = list(parts)

    def serialize(self) -> dict:
        """The Catalog's `and` form."""
        return {"and": [p.serialize() for p in self.parts]}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `and`."""
        return {"op": "and", "args": [p.cql2(fields) for p in self.parts]}

    def evaluate(self, get) -> bool:
        """Whether every part matches."""
        return all(p.evaluate(get) for p in self.parts)


class OrExpression(AndExpression):
    """At least one part holds."""

    def serialize(self) -> dict:
        """The Catalog's `or` form."""
        return {"or": [p.serialize() for p in self.parts]}

    def cql2(self, fields: Fields) -> dict:
        """CQL2 `or`."""
        return {"op": "or", "args": [p.cql2(fields) for p in self.parts]}

    def evaluate(self, get) -> bool:
        """Whether any part matches."""
        return any(p.evaluate(get) for p in self.parts)


class Property:
    """One attribute in a filter. Comparisons build expressions; a chained comparison
    (`a <= p < b`) evaluates `p` once, so the property keeps the last range it was given and
    the second comparison extends it into one two-ended range."""

    def __init__(self, name: str):
        self.name = name
        self._range: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Property:
        if name.startswith("__"):
            raise AttributeError(name)
        return Property(f"{self.name}.{name}")

    def _ranged(self, op: str, value: Any) -> RangeExpression:
        parts = {k: v for k, v in self._range.items() if RANGE_OPS[k][0] != RANGE_OPS[op][0]}
        parts[op] = value
        self._range = {op: value}
        return RangeExpression(self.name, parts)

    def __lt__(self, value):
        return self._ranged("lt", value)

    def __le__(self, value):
        return self._ranged("lte", value)

    def __gt__(self, value):
        return self._ranged("gt", value)

    def __ge__(self, value):
        return self._ranged("gte", value)

    def __eq__(self, value):  # type: ignore[override]
        return EqExpression(self.name, value)

    def __ne__(self, value):  # type: ignore[override]
        return NeExpression(self.name, value)

    __hash__ = None  # type: ignore[assignment]

    def in_(self, values: Iterable[Any]) -> Expression:
        """Any of `values` (an `or` of equalities, as the Catalog writes it)."""
        return OrExpression([EqExpression(self.name, v) for v in values])

    any_of = in_

    def like(self, pattern: str) -> LikeExpression:
        """Case-insensitive match; `%` is any run of characters, `_` one character."""
        return LikeExpression(self.name, pattern)

    def prefix(self, prefix: str) -> PrefixExpression:
        """Text starting with `prefix` (case-sensitive)."""
        return PrefixExpression(self.name, prefix)

    def isnull(self) -> EqExpression:
        """The property is null (missing)."""
        return EqExpression(self.name, None)

    def isnotnull(self) -> NeExpression:
        """The property has a value."""
        return NeExpression(self.name, None)


class Properties:
    """`properties.NAME` is the Property NAME."""

    def __getattr__(self, name: str) -> Property:
        if name.startswith("__"):
            raise AttributeError(name)
        return Property(name)

    def __getitem__(self, name: str) -> Property:
        return Property(name)


properties = Properties()
