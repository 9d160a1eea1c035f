"""How well a metadata table covers the items of one ingest: rows without items, items without rows."""

from __future__ import annotations

from pathlib import Path

from threads_search.errors import InputError
from threads_search.readers.metadata_csv import MetadataTable


def coverage_warnings(metadata: MetadataTable, item_ids: list[str], source: Path, item_noun: str,
                      strict: bool, item_paths: dict[str, Path] | None = None) -> list[str]:
    """One-liners for metadata rows without an item and items without a metadata row.

    `item_noun` names an item ('feature file', 'sample'); `source` is where the items came from,
    or `item_paths` gives each item's own file (then the first unmatched file is named).
    With `strict`, the first mismatch is an InputError instead.
    """
    keys = metadata.keys
    known_keys, known_items = set(keys), set(item_ids)
    orphan_rows = [k for k in keys if k not in known_items]
    unmatched_items = [i for i in item_ids if i not in known_keys]
    messages = []
    if orphan_rows:
        messages.append(f"{metadata.path}: {len(orphan_rows)} metadata row(s) have no {item_noun} in {source} "
                        f"(first: '{orphan_rows[0]}')")
    if unmatched_items:
        where = item_paths[unmatched_items[0]] if item_paths else source
        messages.append(f"{where}: {len(unmatched_items)} {item_noun}(s) have no metadata row in {metadata.path} "
                        f"(first: '{unmatched_items[0]}')")
    if strict and messages:
        raise InputError(messages[0])
    return messages
