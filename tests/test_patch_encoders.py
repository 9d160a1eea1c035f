"""Patch-encoder registry, the built-in encoder's values, and loading local weights."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from threads_search.encoders.patch import create_patch_encoder, get_patch_encoder_spec, list_patch_encoders
from threads_search.encoders.patch.builtin import HISTOGRAM_BINS, STAIN_OD_VECTORS, StainTextureEncoder
from threads_search.encoders.patch.resnet_trunc import ResNet50Trunc
from threads_search.errors import InputError, ModelMismatchError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


def _tissue_like_patches(n: int, seed: int, size: int = 224, colour=(200, 110, 170)) -> np.ndarray:
    """(n, size, size, 3) uint8: a stain colour with dark 'nuclei' dots and noise."""
    rng = np.random.default_rng(seed)
    patches = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = np.array(colour, dtype=np.float64) + rng.normal(0, 8, (size, size, 3))
        for cy, cx in rng.integers(0, size, (40, 2)):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = (90, 50, 140)
        patches[i] = np.clip(image, 0, 255).astype(np.uint8)
    return patches


# --- registry -----------------------------------------------------------------------


def test_registry_lists_each_name_once_with_its_dimension():
    specs = {spec.name: spec for spec in list_patch_encoders()}
    assert {"builtin_stain_texture", "conch_v15", "uni_v1", "uni2_h", "resnet50_trunc", "torchscript"} <= set(specs)
    assert (specs["conch_v15"].output_dim, specs["conch_v15"].input_size) == (768, 448)
    assert specs["uni_v1"].output_dim == 1024 and specs["uni2_h"].output_dim == 1536
    assert specs["uni_v1"].mean == (0.485, 0.456, 0.406) and specs["uni_v1"].std == (0.229, 0.224, 0.225)
    assert specs["builtin_stain_texture"].output_dim == 384 and not specs["builtin_stain_texture"].needs_weights
    assert "not a substitute" in specs["builtin_stain_texture"].description
    assert all(spec.needs_weights for name, spec in specs.items() if name != "builtin_stain_texture")
    assert [spec.name for spec in list_patch_encoders("uni")] == ["uni2_h", "uni_v1"]


def test_aliases_resolve_to_one_spec():
    assert get_patch_encoder_spec("builtin") is get_patch_encoder_spec("builtin_stain_texture")
    assert get_patch_encoder_spec("uni_v2").name == "uni2_h"


def test_unknown_name_is_answered_with_close_matches():
    with pytest.raises(InputError, match=r"unknown patch encoder 'uni_v3'; did you mean 'uni_v2', 'uni_v1'") as caught:
        create_patch_encoder("uni_v3")
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="did you mean 'conch_v15'"):
        create_patch_encoder("conch_15")


def test_encoders_that_need_weights_say_so(tmp_path):
    with pytest.raises(InputError, match="'uni_v1' needs a local weights file: pass --weights FILE"):
        create_patch_encoder("uni_v1")
    with pytest.raises(InputError, match="no such weights file"):
        create_patch_encoder("uni_v1", tmp_path / "missing.safetensors")


# --- built-in encoder ---------------------------------------------------------------


def test_white_patch_has_all_mass_in_the_zero_density_bins_and_no_texture():
    encoder = create_patch_encoder("builtin")
    features = encoder.encode(np.full((1, 224, 224, 3), 255, dtype=np.uint8))[0]
    assert features.shape == (384,) and features.dtype == np.float32
    histograms = features[:192].reshape(6, HISTOGRAM_BINS)
    # OD of white is -log10(256/256) = 0; the bin holding 0 is floor((0 - low) / (high - low) * 32)
    expected_bins = [0, 0, 0, int(0.2 / 1.7 * 32), int(0.3 / 1.2 * 32), int(0.2 / 1.0 * 32)]
    assert expected_bins == [0, 0, 0, 3, 8, 6]
    for channel, expected in enumerate(expected_bins):
        assert histograms[channel, expected] == pytest.approx(1.0)
        assert histograms[channel].sum() == pytest.approx(1.0)
    assert np.abs(features[192:]).max() < 1e-4  # zero-mean filters do not respond to a flat field


def test_colour_deconvolution_recovers_a_pure_haematoxylin_density():
    encoder = StainTextureEncoder()
    stains = np.array(STAIN_OD_VECTORS) / np.linalg.norm(STAIN_OD_VECTORS, axis=1, keepdims=True)
    od = 0.8 * stains[0]  # 0.8 units of haematoxylin, nothing else
    rgb = (256.0 * 10.0 ** (-od) - 1.0) / 255.0  # inverse of OD = -log10((255 rgb + 1) / 256)
    image = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    concentrations = encoder.optical_density(image)[0, 3:, 0, 0]
    assert concentrations.tolist() == pytest.approx([0.8, 0.0, 0.0], abs=1e-4)


def test_histogram_blocks_are_unit_vectors_and_features_deterministic():
    encoder = create_patch_encoder("builtin")
    patches = _tissue_like_patches(3, seed=0, size=300)
    first, second = encoder.encode(patches), encoder.encode(patches)
    assert np.array_equal(first, second)
    blocks = first[:, :192].reshape(3, 6, HISTOGRAM_BINS)
    assert np.allclose((blocks**2).sum(axis=2), 1.0, atol=1e-5)  # sqrt of frequencies summing to 1
    alone = encoder.encode(patches[1:2])
    assert np.allclose(alone[0], first[1], atol=1e-5)  # a patch's features do not depend on its batch


def test_features_are_blind_to_quarter_turns_but_see_stain_changes():
    encoder = create_patch_encoder("builtin")
    pink = _tissue_like_patches(2, seed=3)
    rotated = np.ascontiguousarray(np.rot90(pink, k=1, axes=(1, 2)))
    purple = _tissue_like_patches(1, seed=3, colour=(150, 90, 190))
    f_pink, f_rot, f_purple = encoder.encode(pink), encoder.encode(rotated), encoder.encode(purple)
    assert np.allclose(f_pink[:, :192], f_rot[:, :192], atol=1e-6)  # histograms ignore geometry
    # Orientation max/mean over {0, 45, 90, 135} degrees maps onto itself under a quarter turn;
    # only pooling windows that straddle the 28 px border differ.
    assert np.abs(f_pink - f_rot).max() < 0.05
    same_stain = np.linalg.norm(f_pink[0] - f_pink[1])
    other_stain = np.linalg.norm(f_pink[0] - f_purple[0])
    assert other_stain > 3 * same_stain


# --- local weights ------------------------------------------------------------------


class _TinyNet(torch.nn.Module):
    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def _torchscript(tmp_path, name: str, out_dim: int, size: int = 224):
    torch.manual_seed(0)
    path = tmp_path / name
    torch.jit.trace(_TinyNet(out_dim).eval(), torch.zeros(1, 3, size, size)).save(str(path))
    return path


def test_torchscript_with_the_declared_dimension_loads_and_encodes(tmp_path):
    path = _torchscript(tmp_path, "uni_export.pt", 1024)
    encoder = create_patch_encoder("uni_v1", path)
    patches = _tissue_like_patches(2, seed=5, size=256)
    features = encoder.encode(patches)
    reference = torch.jit.load(str(path))(encoder.preprocess(patches)).detach().numpy()
    assert features.shape == (2, 1024)
    assert np.allclose(features, reference, atol=1e-6)


def test_torchscript_with_the_wrong_dimension_is_a_model_mismatch(tmp_path):
    path = _torchscript(tmp_path, "small.pt", 10)
    with pytest.raises(ModelMismatchError, match=r"small\.pt: model outputs 10 features, 'uni_v1' expects 1024"):
        create_patch_encoder("uni_v1", path)


def test_generic_torchscript_reads_its_sidecar(tmp_path):
    path = _torchscript(tmp_path, "mine.pt", 7, size=96)
    (tmp_path / "mine.pt.json").write_text(json.dumps({"input_size": 96, "mean": [0.5] * 3, "std": [0.25] * 3}))
    encoder = create_patch_encoder("torchscript", path)
    assert (encoder.spec.input_size, encoder.spec.output_dim, encoder.name) == (96, 7, "torchscript[mine.pt]")
    assert encoder.preprocess(np.full((1, 50, 50, 3), 255, dtype=np.uint8)).flatten().tolist() == pytest.approx(
        [2.0] * 3 * 96 * 96  # (1 - 0.5) / 0.25
    )
    (tmp_path / "mine.pt.json").write_text(json.dumps({"output_dim": 8}))
    with pytest.raises(ModelMismatchError, match="outputs 7 features"):
        create_patch_encoder("torchscript", path)


def test_resnet50_trunc_loads_torchvision_layout_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = ResNet50Trunc().eval()
    tensors = {k: v.clone() for k, v in reference.state_dict().items()}
    tensors["fc.weight"] = torch.zeros(1000, 2048)  # a full ResNet-50 file: layer4/fc are ignored
    tensors["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)
    path = tmp_path / "resnet50.safetensors"
    save_file(tensors, str(path))
    encoder = create_patch_encoder("resnet50", path)
    patches = _tissue_like_patches(1, seed=7)
    with torch.inference_mode():
        expected = reference(encoder.preprocess(patches)).numpy()
    assert np.allclose(encoder.encode(patches), expected, atol=1e-5)

    tensors["layer3.0.conv1.weight"] = torch.zeros(256, 512, 3, 3)
    del tensors["bn1.weight"]
    save_file(tensors, str(path))
    with pytest.raises(ModelMismatchError, match=r"resnet50\.safetensors: weights do not fit 'resnet50_trunc' "
                       r"\(wrong shapes: layer3\.0\.conv1\.weight \(256, 512, 3, 3\) vs \(256, 512, 1, 1\); "
                       r"missing: bn1\.weight\)"):
        create_patch_encoder("resnet50_trunc", path)


def test_unreadable_weights_file_is_an_input_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=r"broken\.safetensors: cannot read weights"):
        create_patch_encoder("resnet50_trunc", path)


def test_state_dicts_for_timm_models_need_timm(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    path = tmp_path / "uni.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(InputError, match="needs timm, which is not installed: pip install timm"):
        create_patch_encoder("uni_v1", path)
    with pytest.raises(InputError, match="conch_v15 loads from a TorchScript export"):
        create_patch_encoder("conch_v15", path)


def test_timm_family_loads_weights_and_ignores_the_classifier(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    class FakeTimmNet(torch.nn.Module):
        num_features = 4
        pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classifier": "head"}

        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.body(x.mean(dim=(2, 3)))

    created = {}

    def create_model(name, pretrained, num_classes, **kwargs):
        created.update(name=name, pretrained=pretrained, num_classes=num_classes)
        return FakeTimmNet()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    weights = {"body.weight": torch.eye(4, 3), "body.bias": torch.arange(4.0), "head.weight": torch.zeros(10, 4)}
    path = tmp_path / "net.safetensors"
    save_file(weights, str(path))
    encoder = create_patch_encoder("timm:fakenet", path)
    assert created == {"name": "fakenet", "pretrained": False, "num_classes": 0}
    assert (encoder.name, encoder.spec.input_size, encoder.output_dim) == ("timm:fakenet", 64, 4)
    features = encoder.encode(np.full((1, 64, 64, 3), 255, dtype=np.uint8))
    # input normalised to (1 - 0.5) / 0.5 = 1 per channel; eye(4, 3) @ [1, 1, 1] + [0, 1, 2, 3]
    assert features[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 3.0])


class _Opaque:
    """An arbitrary Python object: torch.load(weights_only=True) refuses to unpickle it."""


def test_torch_checkpoints_are_read_weights_only_and_unwrapped(tmp_path):
    from threads_search.encoders.patch.local_weights import is_torchscript_file, load_state_dict_file

    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {"proj.weight": torch.ones(2, 3)}, "epoch": 3}, checkpoint)
    loaded = load_state_dict_file(checkpoint)
    assert list(loaded) == ["proj.weight"] and loaded["proj.weight"].sum().item() == 6.0
    assert not is_torchscript_file(checkpoint)
    assert is_torchscript_file(_torchscript(tmp_path, "scripted.pt", 4))

    torch.save({"model": _Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(InputError, match=r"pickled\.pt: cannot read weights"):
        load_state_dict_file(tmp_path / "pickled.pt")



def test_torch_export_archives_are_refused_because_loading_them_unpickles(tmp_path):
    torch.manual_seed(0)
    program = torch.export.export(_TinyNet(1024).eval(), (torch.zeros(1, 3, 32, 32),))
    path = tmp_path / "uni.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(InputError, match=r"uni\.pt2: not a TorchScript model"):
        create_patch_encoder("torchscript", path)
