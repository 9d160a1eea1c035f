"""What an ingest call does with each incoming item: add, replace, leave, or refuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from threads_search.errors import InputError


@dataclass
class IngestReport:
    """What an ingest call did; `warnings` are one-liners the CLI prints."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    metadata_rows_matched: int = 0
    warnings: list[str] = field(default_factory=list)


def plan_writes(keys: list[str], signatures: list[str], existing: dict[str, str], replace: bool,
                report: IngestReport, refusal: Callable[[int], str]) -> list[int]:
    """Indices of the items to write, counting them into `report`.

    An id not in the atlas is added; one whose stored signature (fingerprint, batch) is the
    same is left as it is, so re-running an ingest changes nothing; one from a different file
    is replaced with `replace`, else refused with `refusal(index)` + a pointer to --replace.
    """
    chosen = []
    for index, (key, signature) in enumerate(zip(keys, signatures)):
        if key not in existing:
            chosen.append(index)
        elif existing[key] == signature:
            report.unchanged += 1
        elif replace:
            chosen.append(index)
            report.replaced += 1
        else:
            raise InputError(f"{refusal(index)}; pass --replace to replace it")
    report.added = len(chosen) - report.replaced
    return chosen
