"""Patch-encoder identity: one alias table for TRIDENT / CLAM / Hugging Face / this project's
spellings, and `ingest slides --encoder` for files that name none (CLAM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_clam, write_trident
from threads_search.cli.app import app
from threads_search.encoders.patch.names import PATCH_ENCODER_ALIASES, canonical_patch_encoder, same_patch_encoder


def run(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("resnet50", "resnet50_trunc"), ("resnet50_trunc", "resnet50_trunc"), ("uni_v2", "uni2_h"),
    ("UNI2-h", "uni2_h"), ("MahmoodLab/UNI2-h", "uni2_h"), ("conch_v1_5", "conch_v15"), ("conch_v1.5", "conch_v15"),
    ("conchv1_5", "conch_v15"), ("uni", "uni_v1"), ("H-optimus-0", "hoptimus0"), ("prov-gigapath", "gigapath"),
    ("timm:vit_base_patch16_224.augreg_in21k", "timm:vit_base_patch16_224.augreg_in21k"), ("myEncoder", "myencoder"),
])
def test_spellings_map_to_one_canonical_name(spelling, canonical):
    assert canonical_patch_encoder(spelling) == canonical


def test_equal_and_different_encoders():
    assert same_patch_encoder("resnet50", "resnet50_trunc")
    assert same_patch_encoder("uni_v2", "uni2_h") and same_patch_encoder("conch_v15", "conch_v1_5")
    assert not same_patch_encoder("uni_v1", "uni_v2") and not same_patch_encoder("conch_v1", "conch_v15")
    assert not same_patch_encoder(None, "uni_v1") and canonical_patch_encoder("  ") is None
    aliases = [a for names in PATCH_ENCODER_ALIASES.values() for a in names]
    assert len(aliases) == len(set(aliases)) and not set(aliases) & set(PATCH_ENCODER_ALIASES)


def test_registry_resolves_every_spelling_of_a_registered_encoder():
    from threads_search.encoders.patch import get_patch_encoder_spec

    assert get_patch_encoder_spec("resnet50").name == "resnet50_trunc"
    assert get_patch_encoder_spec("conch_v1_5").name == "conch_v15"
    assert get_patch_encoder_spec("MahmoodLab/UNI2-h").name == "uni2_h"


def test_trident_resnet50_and_resnet50_trunc_features_share_an_atlas(tmp_path, rng):
    atlas = tmp_path / "atlas"
    write_trident(tmp_path / "a.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="resnet50")
    write_trident(tmp_path / "b.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="resnet50_trunc")
    write_trident(tmp_path / "c.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="uni_v1")
    run("init", atlas)
    run("ingest", "slides", atlas, tmp_path / "a.h5")
    run("ingest", "slides", atlas, tmp_path / "b.h5")
    result = run("ingest", "slides", atlas, tmp_path / "c.h5", ok=False)
    assert "c.h5: patch encoder 'uni_v1' differs from the atlas's 'resnet50_trunc'" in result.output
    from threads_search.atlas.store import open_atlas

    with open_atlas(atlas, read_only=True) as opened:
        assert opened.meta("patch_encoder") == "resnet50_trunc"
        assert opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 2


def test_model_built_on_one_spelling_accepts_the_other():
    from threads_search.encoders.registry import create_model
    from threads_search.errors import ModelMismatchError

    model = create_model("meanpool", in_dim=16, patch_encoder="uni2_h")
    model.check_features(16, "uni_v2")
    with pytest.raises(ModelMismatchError, match="'uni2_h' patch features, not 'uni_v1'"):
        model.check_features(16, "uni_v1")


def clam_folder(root: Path, rng, n: int = 2) -> Path:
    root.mkdir()
    for k in range(n):
        write_clam(root / f"{root.name}{k}.h5", rng.normal(size=(6, 16)).astype(np.float32))
    return root


def test_clam_files_take_a_declared_encoder_that_is_recorded_and_enforced(tmp_path, rng):
    from threads_search.atlas.store import open_atlas

    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slides", atlas, clam_folder(tmp_path / "first", rng), "--encoder", "uni")
    with open_atlas(atlas, read_only=True) as opened:
        assert opened.meta("patch_encoder") == "uni_v1"
        assert {r[0] for r in opened.sql("SELECT patch_encoder FROM slides").fetchall()} == {"uni_v1"}
    more = clam_folder(tmp_path / "more", rng)
    undeclared = run("ingest", "slides", atlas, more, ok=False)
    assert "names no patch encoder while the atlas holds 'uni_v1'" in undeclared.output
    assert "--encoder uni_v1" in undeclared.output
    wrong = run("ingest", "slides", atlas, more, "--encoder", "conch_v15", ok=False)
    assert "differs from the atlas's 'uni_v1'" in wrong.output
    run("ingest", "slides", atlas, more, "--encoder", "uni_v1")
    with open_atlas(atlas, read_only=True) as opened:
        assert opened.sql("SELECT count(*) FROM slides").fetchone()[0] == 4


def test_named_file_contradicting_the_declared_encoder_is_refused(tmp_path, rng):
    write_trident(tmp_path / "named.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="conch_v15")
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slides", atlas, tmp_path / "named.h5", "--encoder", "uni_v1", ok=False)
    assert "named.h5: names patch encoder 'conch_v15', not the declared --encoder 'uni_v1'" in result.output
    run("ingest", "slides", atlas, tmp_path / "named.h5", "--encoder", "conch_v1_5")


def test_named_and_unnamed_files_do_not_mix_undeclared(tmp_path, rng):
    folder = clam_folder(tmp_path / "mixed", rng, n=1)
    write_trident(folder / "named.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="uni_v1")
    atlas = tmp_path / "atlas"
    run("init", atlas)
    result = run("ingest", "slides", atlas, folder, ok=False)
    assert "mixed0.h5: names no patch encoder while" in result.output and "named.h5 names 'uni_v1'" in result.output
    run("ingest", "slides", atlas, folder, "--encoder", "uni_v1")


def test_named_files_into_an_atlas_of_unnamed_ones_need_a_declaration(tmp_path, rng):
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slides", atlas, clam_folder(tmp_path / "clam", rng))
    write_trident(tmp_path / "named.h5", rng.normal(size=(8, 16)).astype(np.float32), encoder="uni_v1")
    result = run("ingest", "slides", atlas, tmp_path / "named.h5", ok=False)
    assert "the atlas's slides name none" in result.output
    run("ingest", "slides", atlas, tmp_path / "named.h5", "--encoder", "uni_v1")



@pytest.mark.parametrize(("atlas_encoder", "warned"), [("conch_v1_5", False), ("MahmoodLab/conchv1_5", False),
                                                       ("uni_v1", True)])
def test_published_weights_compare_the_atlas_encoder_through_the_aliases(tmp_path, rng, atlas_encoder, warned):
    from test_published_encoders import feather_state, save_safetensors

    folder = tmp_path / "features"
    folder.mkdir()
    for k in range(3):
        write_trident(folder / f"s{k}.h5", rng.normal(size=(12, 768)).astype(np.float32), encoder=atlas_encoder)
    atlas = tmp_path / "atlas"
    run("init", atlas)
    run("ingest", "slides", atlas, folder)
    weights = save_safetensors(tmp_path / "feather.safetensors", feather_state(seed=1))
    result = run("embed", atlas, "--model", "feather", "--weights", weights, "--quiet")
    assert ("may mean little" in result.output) is warned, result.output
