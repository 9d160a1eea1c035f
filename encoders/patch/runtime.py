"""A ready patch encoder: resize + normalise uint8 patches, run the model, return features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from threads_search.encoders.patch.registry import PatchEncoderSpec
from threads_search.errors import InputError, ModelMismatchError


class PatchEncoder:
    """A model and its spec; `encode` maps (b, h, w, 3) uint8 patches to (b, dim) float32."""

    def __init__(self, spec: PatchEncoderSpec, module: torch.nn.Module, device: str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def output_dim(self) -> int | None:
        return self.spec.output_dim

    def preprocess(self, patches: np.ndarray) -> torch.Tensor:
        """(b, h, w, 3) uint8 -> (b, 3, input_size, input_size) float32, resized and normalised.

        Resizing is bilinear with antialiasing (a 512 px patch shrunk to 224 px must not alias).
        On the CPU it runs on the uint8 pixels (torch's fast path, ~10x quicker than in float;
        the result is rounded to whole grey levels).
        """
        if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
            raise InputError(f"patches must be (b, h, w, 3) uint8, got {patches.shape} {patches.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).permute(0, 3, 1, 2)
        size = self.spec.input_size
        resize = images.shape[-2:] != (size, size)
        if resize and self.device.type == "cpu":
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            resize = False
        images = images.float().div_(255.0)
        if resize:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            images = images.clamp_(0.0, 1.0)
        return ((images - self._mean) / self._std).contiguous()

    @torch.inference_mode()
    def encode(self, patches: np.ndarray) -> np.ndarray:
        """(b, h, w, 3) uint8 RGB patches -> (b, output_dim) float32 features."""
        output = self.module(self.preprocess(patches))
        if isinstance(output, (tuple, list)):  # some TorchScript exports return (features, ...)
            output = output[0]
        if output.ndim > 2 and all(extent == 1 for extent in output.shape[2:]):
            output = output.flatten(1)
        expected = self.spec.output_dim
        if output.ndim != 2 or output.shape[0] != patches.shape[0] or (expected and output.shape[1] != expected):
            raise ModelMismatchError(
                f"patch encoder '{self.name}' returned {tuple(output.shape)} for {patches.shape[0]} patches; "
                f"expected ({patches.shape[0]}, {expected or 'dim'})"
            )
        return output.float().cpu().numpy()
