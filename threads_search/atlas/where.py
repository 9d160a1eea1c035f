"""The filter language of `--where` / `--queries` / `--database` / `--train` / `--test`.

A filter is ONE boolean expression over the items' columns (metadata columns, plus
`item_id`, `patient_id`, `sample_id`, `modality`), e.g. ``cohort = 'heldout' AND site <> 'site3'``.

It is parsed once, by DuckDB's own parser (`json_serialize_sql`), into a syntax tree that must
have exactly the shape of ``SELECT 1 FROM items WHERE <expression>`` and whose expression is
built only from an allow-list of node kinds: constants, column references, comparisons,
AND/OR/NOT, IN, BETWEEN, IS NULL, CASE, CAST to plain types and an allow-list of scalar
functions. Subqueries, table functions, `*`, parameters, window functions, qualified names and
anything else are refused with one line naming the option and the reason.

The statement that runs is rendered by DuckDB from the validated tree (never the user's
text), and runs once on a sandbox connection: in memory, external access disabled,
extensions not loaded, configuration locked, holding nothing but a copy of the items table.
Its result is a sorted array of vector ids, which later steps bind as data.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from threads_search.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from threads_search.atlas.store import Atlas

MAX_FILTER_CHARS = 4000
MAX_NODES = 2000
MAX_DEPTH = 64

SANDBOX_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "threads": 1,
    "memory_limit": "1GB",
    "lock_configuration": True,
}

ALLOWED_FUNCTIONS = frozenset({
    # pattern matching (LIKE, NOT LIKE, ILIKE, NOT ILIKE, GLOB on strings, SIMILAR TO)
    "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~", "regexp_matches", "regexp_full_match",
    # arithmetic and text
    "+", "-", "*", "/", "//", "%", "||", "abs", "round", "floor", "ceil", "ceiling", "least", "greatest",
    "lower", "upper", "lcase", "ucase", "length", "strlen", "len", "trim", "ltrim", "rtrim", "substr", "substring",
    "starts_with", "ends_with", "prefix", "suffix", "contains", "split_part", "replace", "left", "right",
    "concat", "nullif", "coalesce", "ifnull", "isnan", "isinf", "isfinite",
    # dates
    "year", "month", "day", "date_part", "datepart", "date_diff", "datediff",
})
ALLOWED_TYPES = frozenset({
    "VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "BOOLEAN", "BOOL", "TINYINT", "SMALLINT", "INTEGER", "INT",
    "INT4", "INT8", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "REAL", "DOUBLE",
    "DECIMAL", "NUMERIC", "DATE", "TIMESTAMP", "TIME", "INTERVAL",
})
ALLOWED_OPERATORS = frozenset({
    "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN", "OPERATOR_COALESCE",
})
# Keys every expression node carries; `alias` must be empty.
_COMMON_KEYS = {"class", "type", "alias", "query_location", "query_location_length"}
_TEMPLATE = "SELECT 1 FROM items WHERE TRUE"


@dataclass(frozen=True)
class Where:
    """A validated filter: the user's text, the option it came from, and the statement that runs."""

    text: str
    option: str
    statement: str  # SELECT vid, modality FROM items WHERE <expression rendered from the validated tree>
    columns: tuple[str, ...]  # the item columns the expression reads

    def describe(self) -> str:
        return f'{self.option} "{self.text}"'


class _Refused(Exception):
    pass


def _sandbox():
    import duckdb

    return duckdb.connect(":memory:", config=SANDBOX_CONFIG)


_parser_lock = threading.Lock()
_parser: dict = {}


@contextmanager
def _parser_connection():
    """One sandbox connection per process for parsing (it holds no table), used by one thread at a time."""
    with _parser_lock:
        if "connection" not in _parser:
            connection = _sandbox()
            _parser["connection"] = connection
            template = _serialize(connection, _TEMPLATE)["statements"][0]
            _parser["shape"] = _strip_locations({**template, "node": {**template["node"], "where_clause": None}})
            _parser["query"] = json.dumps(_serialize(connection, "SELECT vid, modality FROM items WHERE TRUE"))
        yield _parser["connection"]


def _serialize(connection, sql: str) -> dict:
    return json.loads(connection.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])


def _strip_locations(node):
    if isinstance(node, dict):
        return {k: _strip_locations(v) for k, v in node.items() if k not in ("query_location", "query_location_length")}
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


class _Validator:
    """Walks one expression tree; refuses any node outside the allow-list."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.known = {c.lower(): c for c in columns}
        self.used: dict[str, None] = {}
        self.nodes = 0

    def check(self, node, depth: int = 0) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _Refused("the expression is too large")
        if not isinstance(node, dict) or "class" not in node:
            raise _Refused("unsupported syntax")
        kind = node["class"]
        if node.get("alias"):
            raise _Refused("aliases are not allowed")
        handler = getattr(self, f"_node_{kind.lower()}", None)
        if handler is None:
            raise _Refused(_REFUSED_KINDS.get(kind, f"{kind.lower().replace('_', ' ')} expressions are not allowed"))
        handler(node, depth + 1)

    def _keys(self, node: dict, *allowed: str) -> None:
        extra = set(node) - _COMMON_KEYS - set(allowed)
        if extra:
            raise _Refused(f"unsupported syntax ({', '.join(sorted(extra))})")

    def _node_constant(self, node, depth):
        self._keys(node, "literal")

    def _node_column_ref(self, node, depth):
        self._keys(node, "column_names")
        names = node["column_names"]
        if len(names) != 1:
            raise _Refused(f"qualified name {'.'.join(names)} is not allowed; name the column alone")
        name = names[0]
        if name.lower() not in self.known:
            raise _Refused(f"no column '{name}'")
        self.used[self.known[name.lower()]] = None

    def _node_comparison(self, node, depth):
        self._keys(node, "left", "right")
        self.check(node["left"], depth)
        self.check(node["right"], depth)

    def _node_conjunction(self, node, depth):
        self._keys(node, "children")
        for child in node["children"]:
            self.check(child, depth)

    def _node_operator(self, node, depth):
        self._keys(node, "children")
        if node["type"] not in ALLOWED_OPERATORS:
            raise _Refused(f"operator {node['type'].removeprefix('OPERATOR_').lower()} is not allowed")
        for child in node["children"]:
            self.check(child, depth)

    def _node_between(self, node, depth):
        self._keys(node, "input", "lower", "upper")
        for key in ("input", "lower", "upper"):
            self.check(node[key], depth)

    def _node_case(self, node, depth):
        self._keys(node, "case_checks", "else_expr")
        for case_check in node["case_checks"]:
            if set(case_check) != {"when_expr", "then_expr"}:
                raise _Refused("unsupported CASE syntax")
            self.check(case_check["when_expr"], depth)
            self.check(case_check["then_expr"], depth)
        self.check(node["else_expr"], depth)

    def _node_cast(self, node, depth):
        self._keys(node, "child", "try_cast", "type_expr", "cast_type")
        type_node = node.get("type_expr")
        if type_node is not None:
            self._keys(type_node, "catalog", "schema", "type_name", "children", "qualified_name")
            if type_node.get("catalog") or type_node.get("schema") or type_node.get("type_name", "").upper() not in ALLOWED_TYPES:
                raise _Refused(f"cast to {type_node.get('type_name', '?')} is not allowed")
            for child in type_node.get("children", []):
                self.check(child.get("expression", child) if isinstance(child, dict) and "expression" in child else child, depth)
        self.check(node["child"], depth)

    def _node_function(self, node, depth):
        self._keys(node, "function_name", "schema", "catalog", "filter", "order_bys", "distinct", "is_operator",
                   "export_state", "arguments", "children", "qualified_name", "is_legacy_function_call")
        name = node["function_name"]
        if name.lower() not in ALLOWED_FUNCTIONS:
            raise _Refused(f"function {name}() is not allowed")
        if node.get("schema") or node.get("catalog"):
            raise _Refused(f"qualified function {node.get('schema')}.{name}() is not allowed")
        if node.get("filter") is not None or node.get("distinct") or node.get("export_state"):
            raise _Refused(f"{name}() may not take FILTER, DISTINCT or EXPORT_STATE")
        if (node.get("order_bys") or {}).get("orders"):
            raise _Refused(f"{name}() may not take ORDER BY")
        arguments = node.get("arguments", node.get("children", []))
        for argument in arguments:
            if isinstance(argument, dict) and "expression" in argument:
                if argument.get("name"):
                    raise _Refused(f"named argument {argument['name']} is not allowed")
                argument = argument["expression"]
            self.check(argument, depth)


_REFUSED_KINDS = {
    "SUBQUERY": "subqueries are not allowed",
    "STAR": "* is not allowed",
    "WINDOW": "window functions are not allowed",
    "PARAMETER": "parameters are not allowed",
    "LAMBDA": "lambdas are not allowed",
    "LAMBDA_REF": "lambdas are not allowed",
    "POSITIONAL_REFERENCE": "positional references are not allowed",
    "DEFAULT": "DEFAULT is not allowed",
    "COLLATE": "COLLATE is not allowed",
}


def parse_where(text: str | None, columns: Sequence[str], option: str = "--where") -> Where | None:
    """Validate a filter over `columns`; None for an empty one. Refusals are one-line InputErrors."""
    if text is None or not text.strip():
        return None
    listed = ", ".join(columns)

    def refuse(reason: str) -> InputError:
        shown = text if len(text) <= 200 else text[:200] + "..."
        return InputError(f'{option} "{" ".join(shown.split())}": {reason} (columns: {listed})')

    if len(text) > MAX_FILTER_CHARS:
        raise refuse(f"longer than {MAX_FILTER_CHARS} characters")
    if "\x00" in text:
        raise refuse("contains a NUL character")
    with _parser_connection() as connection:
        # The text is only parsed here, never run; the parse tree decides what is accepted.
        parsed = _serialize(connection, f"SELECT 1 FROM items WHERE {text}\n")
        if parsed.get("error"):
            raise refuse(_parser_message(parsed))
        statements = parsed.get("statements", [])
        if len(statements) != 1:
            raise refuse("must be one expression, not several statements")
        statement = statements[0]
        expression = statement.get("node", {}).get("where_clause")
        shape = _strip_locations({**statement, "node": {**statement.get("node", {}), "where_clause": None}})
        if shape != _parser["shape"] or expression is None:
            raise refuse("must be one boolean expression over the columns (no ORDER BY, LIMIT, UNION, GROUP BY ...)")
        validator = _Validator(columns)
        try:
            validator.check(expression)
        except _Refused as refusal:
            raise refuse(str(refusal)) from None
        query = json.loads(_parser["query"])
        query["statements"][0]["node"]["where_clause"] = expression
        rendered = connection.execute("SELECT json_deserialize_sql(?)", [json.dumps(query)]).fetchall()[0][0]
    return Where(text=text, option=option, statement=rendered, columns=tuple(validator.used))


def _parser_message(parsed: dict) -> str:
    message = str(parsed.get("error_message", "does not parse")).splitlines()[0]
    return f"Parser Error: {message}"


def evaluate_where(where: Where, items: "pa.Table", column_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Run a validated filter over a copy of the items table: (vids (n,) int64, modalities (n,) str), vid order."""
    import duckdb

    connection = _sandbox()
    try:
        connection.register("items", items)
        try:
            result = connection.sql(where.statement + " ORDER BY vid").to_arrow_table()
        except duckdb.Error as error:
            first_line = str(error).splitlines()[0]
            raise InputError(f"{where.describe()}: {first_line} (columns: {', '.join(column_names)})") from None
    finally:
        connection.close()
    from threads_search.atlas.arrow import int64_column

    vids = int64_column(result, "vid")
    modalities = np.asarray(result.column("modality").to_pylist(), dtype=object)
    return vids, modalities


def check_where(atlas: "Atlas", where_sql: "str | Where | None", option: str = "--where") -> Where | None:
    """The validated filter for this atlas's columns (a `Where` passes through)."""
    if isinstance(where_sql, Where) or where_sql is None:
        return where_sql
    return atlas.cached(("where", where_sql, option), lambda: parse_where(where_sql, atlas.filter_columns(), option))


def matching_vids(atlas: "Atlas", modality: str, where_sql: "str | Where | None", option: str = "--where") -> np.ndarray:
    """Sorted int64 vector ids of one modality's items that satisfy the filter (all of them for none)."""
    where = check_where(atlas, where_sql, option)
    return atlas.filter_vids(where, modality)
