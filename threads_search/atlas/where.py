"""`--where` / `--queries` / `--database`: SQL boolean expressions over metadata columns, checked before use."""

from __future__ import annotations

from threads_search.atlas.store import Atlas
from threads_search.errors import InputError


def check_where(atlas: Atlas, where_sql: str | None, option: str = "--where") -> str | None:
    """Return the expression if DuckDB can evaluate it over `items`; else a one-line error listing the columns."""
    if where_sql is None or not where_sql.strip():
        return None
    import duckdb

    try:
        atlas.sql(f"SELECT count(*) FROM items WHERE ({where_sql})")
    except duckdb.Error as error:
        first_line = str(error).splitlines()[0]
        columns = ", ".join(atlas.item_columns())
        raise InputError(f"{option} \"{where_sql}\": {first_line} (columns: {columns})") from None
    return where_sql


def matching_vids(atlas: Atlas, modality: str, where_sql: str | None, option: str = "--where") -> list[int]:
    """Vector ids of one modality's items that satisfy the (checked) expression."""
    condition = check_where(atlas, where_sql, option)
    clause = f"AND ({condition})" if condition else ""
    return [r[0] for r in atlas.sql(f"SELECT vid FROM items WHERE modality = ? {clause} ORDER BY vid", [modality]).fetchall()]
