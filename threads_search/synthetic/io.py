"""Writers for the generated cohort, in the public formats of SPEC §3.

Every file is written to a temporary sibling and renamed into place (`threads_search.atomic`), so an interrupted run
never leaves a half-written file under its final name. Output is byte-deterministic.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from threads_search.atomic import atomic_path
from threads_search.synthetic.bags import (
    LEVEL0_MAGNIFICATION,
    PATCH_SIZE,
    PATCH_SIZE_LEVEL0,
    TARGET_MAGNIFICATION,
    SlideBag,
)

MAF_VERSION_LINE = "#version 2.4"


def write_trident_h5(path: Path, slide_id: str, bag: SlideBag, encoder_name: str) -> None:
    """One slide in TRIDENT's layout.

    Datasets `features` (n, D) float16 and `coords` (n, 2) int64 level-0 (x, y). As TRIDENT
    does, the patching attributes sit on `coords` and the encoder name on `features`.
    """
    x_extent, y_extent = bag.coords.max(axis=0) + PATCH_SIZE_LEVEL0
    margin = 4 * PATCH_SIZE_LEVEL0
    coords_attributes = {
        "patch_size": PATCH_SIZE,
        "patch_size_level0": PATCH_SIZE_LEVEL0,
        "level0_magnification": LEVEL0_MAGNIFICATION,
        "target_magnification": TARGET_MAGNIFICATION,
        "overlap": 0,
        "name": slide_id,
        "level0_width": int(x_extent + margin),
        "level0_height": int(y_extent + margin),
    }
    features_attributes = {"name": slide_id, "encoder": encoder_name, "savetodir": "features"}
    import h5py  # heavy; imported where used (see docs/ARCHITECTURE.md)

    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w", track_order=False) as handle:
            features = handle.create_dataset("features", data=bag.features, track_times=False)
            coords = handle.create_dataset("coords", data=bag.coords, track_times=False)
            features.attrs.update(features_attributes)
            coords.attrs.update(coords_attributes)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Comma-separated table with a header line ('\\n' line ends)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def write_expression_csv(path: Path, sample_ids: Sequence[str], genes: Sequence[str], tpm) -> None:
    """Samples as rows: `sample_id`, then one column per gene, TPM with 6 significant digits.

    tpm: (n_samples, n_genes) float. Formatting is vectorised (np.char) for speed.
    """
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(",".join(["sample_id", *genes]) + "\n")
            for sample_id, values in zip(sample_ids, tpm):
                handle.write(sample_id + "," + ",".join(np.char.mod("%.6g", values)) + "\n")


def write_maf(path: Path, columns: Sequence[str], records: Sequence[dict]) -> None:
    """Tab-separated MAF with the usual `#version` first line."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            handle.write(MAF_VERSION_LINE + "\n")
            writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)


def write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
