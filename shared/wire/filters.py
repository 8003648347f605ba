"""Metadata filters: the small, safe subset of SQL a request may pass to LanceDB's `where`.

    filter     := or
    or         := and ("OR" and)*
    and        := unary ("AND" unary)*
    unary      := "NOT" unary | "(" or ")" | comparison
    comparison := column op literal | column ["NOT"] "IN" "(" literal ("," literal)* ")"
                | column "IS" ["NOT"] "NULL"
    op         := = | != | <> | < | <= | > | >=
    literal    := 'text' ('' inside for a quote) | number | TRUE | FALSE
    number     := ["-"] digits ["." digits] [("e" | "E") ["+" | "-"] digits]
    digits     := one or more of the ASCII digits 0-9

Digits are ASCII only: `year = ٣` (an Arabic-Indic three) does not parse, rather than
reaching LanceDB as something its SQL cannot read. A number with a decimal point or an
exponent is a float literal; without, an integer literal.

Columns are plain identifiers, bare or in backticks (as the re-rendered filter writes them,
so a rendered filter parses to itself); which ones a table has, and whether each literal fits its
column's type, is checked where the table is known (the store: `Comparison.literals` are
there for it). Anything else (functions, sub-queries, comments, a second statement) does not
parse, so a filter can only ever select rows. `parse_filter` returns it re-rendered from its
tokens, columns quoted, which is what reaches LanceDB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_FILTER_CHARS = 1000
MAX_NESTING = 16

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<op><=|>=|!=|<>|=|<|>)|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|`(?P<quoted>[A-Za-z_][A-Za-z0-9_]*)`)"
)
_INTEGER = re.compile(r"-?[0-9]+")
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE"}


class FilterError(ValueError):
    """A filter outside the grammar above; the message says where."""


class LiteralKind(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class FilterLiteral:
    """One value a filter compares a column with: its kind and its text as written (a
    string with its quotes, a number with its sign)."""

    kind: LiteralKind
    text: str


@dataclass(frozen=True)
class Comparison:
    """One column and the literals it is compared with (none for IS [NOT] NULL)."""

    column: str
    literals: tuple[FilterLiteral, ...]


@dataclass(frozen=True)
class ParsedFilter:
    """A filter that parsed: its canonical SQL, the columns it reads, and each comparison's
    literals (for the store to check against the columns' types)."""

    sql: str
    columns: frozenset[str]
    comparisons: tuple[Comparison, ...] = ()


def parse_filter(text: str) -> ParsedFilter:
    """Parse `text` (see the module's grammar).

    Raises:
        FilterError: it is longer than MAX_FILTER_CHARS, nests deeper than MAX_NESTING, or
            is not in the grammar; the message names the offending position or token.
    """
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"a filter has at most {MAX_FILTER_CHARS} characters")
    parser = _Parser(_tokens(text))
    sql = parser.or_()
    if parser.position < len(parser.tokens):
        raise FilterError(f"unexpected {parser.tokens[parser.position][1]!r} in filter")
    return ParsedFilter(
        sql=sql, columns=frozenset(parser.columns), comparisons=tuple(parser.comparisons)
    )


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise FilterError(f"filter: cannot read {text[position : position + 20]!r}")
        kind, value = match.lastgroup, match.group(match.lastgroup)
        if kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        elif kind == "quoted":  # a column as the filter's own SQL renders it: `name`
            kind = "word"
        tokens.append((kind, value))
        position = match.end()
    if not tokens:
        raise FilterError("filter is empty")
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.position, self.depth = tokens, 0, 0
        self.columns: set[str] = set()
        self.comparisons: list[Comparison] = []

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, kind: str, value: str | None = None) -> str:
        token = self._peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = "the end" if token is None else repr(token[1])
            raise FilterError(f"filter: expected {value or kind}, found {found}")
        self.position += 1
        return token[1]

    def _accept(self, kind: str, value: str) -> bool:
        if self._peek() == (kind, value):
            self.position += 1
            return True
        return False

    def or_(self) -> str:
        parts = [self.and_()]
        while self._accept("keyword", "OR"):
            parts.append(self.and_())
        return " OR ".join(parts)

    def and_(self) -> str:
        parts = [self.unary()]
        while self._accept("keyword", "AND"):
            parts.append(self.unary())
        return " AND ".join(parts)

    def unary(self) -> str:
        if self._accept("keyword", "NOT"):
            return f"NOT {self.unary()}"
        if self._accept("punct", "("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise FilterError(f"filter nests deeper than {MAX_NESTING} parentheses")
            inner = self.or_()
            self._take("punct", ")")
            self.depth -= 1
            return f"({inner})"
        return self.comparison()

    def comparison(self) -> str:
        name = self._take("word")
        self.columns.add(name)
        column = f"`{name}`"
        token = self._peek()
        if token is not None and token[0] == "op":
            self.position += 1
            value = self.literal()
            self.comparisons.append(Comparison(name, (value,)))
            return f"{column} {token[1]} {value.text}"
        negated = self._accept("keyword", "NOT")
        if self._accept("keyword", "IN"):
            self._take("punct", "(")
            values = [self.literal()]
            while self._accept("punct", ","):
                values.append(self.literal())
            self._take("punct", ")")
            self.comparisons.append(Comparison(name, tuple(values)))
            listed = ", ".join(v.text for v in values)
            return f"{column} {'NOT IN' if negated else 'IN'} ({listed})"
        if not negated and self._accept("keyword", "IS"):
            negated = self._accept("keyword", "NOT")
            self._take("keyword", "NULL")
            self.comparisons.append(Comparison(name, ()))
            return f"{column} IS {'NOT NULL' if negated else 'NULL'}"
        raise FilterError(f"filter: expected a comparison after column {name!r}")

    def literal(self) -> FilterLiteral:
        token = self._peek()
        if token is None:
            raise FilterError("filter: expected a value, found the end")
        kind = _literal_kind(*token)
        if kind is None:
            raise FilterError(f"filter: expected a value, found {token[1]!r}")
        self.position += 1
        return FilterLiteral(kind, token[1])


def _literal_kind(token_kind: str, value: str) -> LiteralKind | None:
    if token_kind == "string":
        return LiteralKind.STRING
    if token_kind == "number":
        return LiteralKind.INTEGER if _INTEGER.fullmatch(value) else LiteralKind.FLOAT
    if token_kind == "keyword" and value in ("TRUE", "FALSE"):
        return LiteralKind.BOOLEAN
    return None
