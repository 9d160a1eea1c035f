"""The `demo --out` folder: what it holds, and whether a run may start there.

A demo folder is marked by `.threads-search-demo` (JSON: the settings it was started with)
the moment a run starts, and is finished once `report/demo.json` exists. On a re-run:

- a new or empty folder: the demo starts;
- a finished demo with the same settings: nothing is recomputed, its report is shown again;
- a finished demo with other settings: refused (one line), the folder is left as it is;
- an interrupted demo (marker, no report): started over, after removing only what a demo
  writes (`cohort/`, `atlas/`, `report/`). Training is the bulk of the run and cannot resume
  mid-way, so starting over costs little more than resuming and is always consistent;
- any other non-empty folder: refused, nothing is touched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from threads_search.atlas.store import utc_now
from threads_search.atomic import write_json_atomic
from threads_search.errors import InputError

MARKER_NAME = ".threads-search-demo"
DEMO_SUBFOLDERS = ("cohort", "atlas", "report")


@dataclass(frozen=True)
class DemoLayout:
    """Paths inside a demo folder."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER_NAME

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def atlas(self) -> Path:
        return self.root / "atlas"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_json(self) -> Path:
        return self.report / "demo.json"

    @property
    def plots(self) -> Path:
        return self.report / "plots"


def settings_key(quick: bool, seed: int) -> dict:
    """What makes two demo runs the same run."""
    return {"quick": bool(quick), "seed": int(seed)}


def describe(key: dict) -> str:
    return f"{'--quick' if key.get('quick') else 'full'} demo, seed {key.get('seed')}"


def prepare_folder(out_dir: str | Path, quick: bool, seed: int) -> tuple[DemoLayout, dict | None, bool]:
    """Make `out_dir` ready for a run; returns (layout, finished payload or None, restarted).

    A finished payload (the parsed `report/demo.json`) means the same demo already ran
    there and nothing needs doing. Raises InputError when the folder cannot be used.
    """
    layout = DemoLayout(Path(out_dir))
    wanted = settings_key(quick, seed)
    root = layout.root
    if root.exists() and not root.is_dir():
        raise InputError(f"--out {root}: exists and is not a folder")
    if not root.exists() or not any(root.iterdir()):
        _start(layout, wanted)
        return layout, None, False
    if not layout.marker.is_file():
        raise InputError(f"--out {root}: folder is not empty and holds no threads-search demo; choose a new or empty folder")
    if layout.report_json.is_file():
        payload = _read_json(layout.report_json)
        found = settings_key(payload.get("settings", {}).get("quick"), payload.get("settings", {}).get("seed", -1))
        if found != wanted:
            raise InputError(f"--out {root}: holds a finished {describe(found)}, not a {describe(wanted)}; "
                             f"choose another --out or delete the folder")
        return layout, payload, False
    for name in DEMO_SUBFOLDERS:
        shutil.rmtree(root / name, ignore_errors=True)
    _start(layout, wanted)
    return layout, None, True


def _start(layout: DemoLayout, key: dict) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.marker, {"settings": key, "started_at": utc_now().isoformat()})


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable demo report ({error}); delete the folder and run the demo again") from None
