"""Command-line paths -> the files one reader takes: files, folders, globs and TRIDENT job folders.

A TRIDENT job folder holds one `<mag>x_<size>px_<overlap>px_overlap/` folder per patching
(`20x_256px_0px_overlap`, `20.0x_512px_0px_overlap`), and in it `features_<patch encoder>/`
and `slide_features_<slide encoder>/` of `<slide>.h5` beside `patches/`, `visualization/` ...
(and `thumbnails/`, `contours/` in the job folder). Given a job or magnification folder, only
the `<prefix><encoder>` folders of the reader's kind are read, of one encoder: the only one
there, or the one `--encoder` names. Such a folder names its encoder (`folder_encoder`);
TRIDENT's own files name none.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from threads_search.errors import InputError

MAGNIFICATION_FOLDER = re.compile(r"\d+(?:\.\d+)?x_\d+px_\d+px_overlap")
# Encoder spelling -> the name it is compared by; the caller's alias table (encoders sit beside readers).
Canonical = Callable[[str], str | None]


def _as_written(name: str) -> str:
    return name


@dataclass(frozen=True)
class FileKind:
    """The files one reader takes, and how the expansion treats the others."""

    noun: str  # "feature file", in messages
    suffixes: tuple[str, ...]
    trident_prefix: str  # TRIDENT's `<prefix><encoder>` folders of this kind: "features_"
    contents: str  # what such a folder holds, in messages: "patch features"
    refused: tuple[str, ...] = ()  # suffixes refused wherever they are met, with `refusal(path)`
    refusal: Callable[[Path], InputError] | None = None
    skip_other_matches: bool = True  # a glob's matches of other suffixes: skipped, else refused
    folder_alone_names_encoder: bool = False  # a `<prefix><enc>` folder names <enc> outside a magnification folder too

    def checked(self, path: Path) -> Path:
        if path.suffix in self.refused and self.refusal is not None:
            raise self.refusal(path)
        if path.suffix not in self.suffixes:
            raise InputError(f"{path}: not a {self.noun} (expected {', '.join(self.suffixes)})")
        return path


def folder_encoder(path: Path, kind: FileKind) -> str | None:
    """The `<encoder>` (as written) of the TRIDENT `<prefix><encoder>` folder that holds `path`, else None."""
    folder = Path(path).parent
    name = folder.name
    if not name.startswith(kind.trident_prefix) or name == kind.trident_prefix:
        return None
    if kind.folder_alone_names_encoder or MAGNIFICATION_FOLDER.fullmatch(folder.parent.name):
        return name[len(kind.trident_prefix):]
    return None


def _listed(folder: Path, kind: FileKind) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in kind.suffixes + kind.refused)


def _encoder_folders(folder: Path, kind: FileKind) -> list[Path] | None:
    """The `<prefix><encoder>` folders of a TRIDENT job or magnification folder; None if it is neither."""
    if MAGNIFICATION_FOLDER.fullmatch(folder.name):
        magnifications = [folder]
    else:
        magnifications = sorted(p for p in folder.iterdir() if p.is_dir() and MAGNIFICATION_FOLDER.fullmatch(p.name))
    if not magnifications:
        return None
    prefix = kind.trident_prefix
    found = [p for m in magnifications for p in sorted(m.iterdir())
             if p.is_dir() and p.name.startswith(prefix) and p.name != prefix]
    if not found:
        held = ", ".join(sorted(p.name for m in magnifications for p in m.iterdir() if p.is_dir())) or "nothing"
        raise InputError(f"{folder}: a TRIDENT folder without {prefix}<encoder> folders of {kind.contents} "
                         f"(it holds {held})")
    return found


def _chosen_folder(folder: Path, found: list[Path], kind: FileKind, encoder: str | None, canonical: Canonical) -> Path:
    """The one `<prefix><encoder>` folder of `found` to read: the only encoder's, or `encoder`'s (any spelling
    `canonical` maps to the same name)."""
    prefix = kind.trident_prefix
    names = ", ".join(sorted({p.name[len(prefix):] for p in found}))
    groups: dict[str, list[Path]] = {}
    for path in found:
        groups.setdefault(canonical(path.name[len(prefix):]), []).append(path)
    if encoder is not None:
        chosen = groups.get(canonical(encoder))
        if chosen is None:
            raise InputError(f"{folder}: no {prefix}<encoder> folder of --encoder '{encoder}' (found: {names})")
    elif len(groups) > 1:
        raise InputError(f"{folder}: holds {kind.contents} of several encoders ({names}); choose one with --encoder NAME")
    else:
        (chosen,) = groups.values()
    if len(chosen) > 1:
        where = ", ".join(str(p.relative_to(folder)) for p in chosen)
        raise InputError(f"{folder}: {where} hold {kind.contents} of the same encoder; give one of these folders")
    return chosen[0]


def _folder_files(folder: Path, kind: FileKind, encoder: str | None, canonical: Canonical) -> list[Path]:
    listed = _listed(folder, kind)
    if listed:
        return listed
    found = _encoder_folders(folder, kind)
    return _listed(_chosen_folder(folder, found, kind, encoder, canonical), kind) if found else []


def expand_paths(arguments: list[str | os.PathLike], kind: FileKind, encoder: str | None = None,
                 canonical: Canonical | None = None) -> list[Path]:
    """Files, folders (their files of `kind`, sorted), globs and TRIDENT job folders -> files of
    `kind`; missing paths, empty patterns and files of other suffixes given by name are refused.
    A folder with no such file of its own is read as a TRIDENT job or magnification folder, of
    the encoder `encoder` names (compared through `canonical`, else as written) where it holds several."""
    canonical = canonical or _as_written
    paths: list[Path] = []
    for argument in arguments:
        text = str(argument)
        candidate = Path(text)
        if candidate.is_dir():
            found = _folder_files(candidate, kind, encoder, canonical)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not found:
                raise InputError(f"{text}: the pattern matches no file")
            if kind.skip_other_matches:
                found = [p for p in found if p.suffix in kind.suffixes + kind.refused]
        elif candidate.is_file():
            found = [candidate]
        else:
            raise InputError(f"{text}: no such file or folder")
        paths.extend(kind.checked(path) for path in found)
    if not paths:
        raise InputError(f"{', '.join(map(str, arguments))}: no {kind.noun}s found ({', '.join(kind.suffixes)})")
    return paths
