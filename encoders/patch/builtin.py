"""Built-in CPU patch encoder: stain colour statistics and a fixed multi-scale filter bank.

No learned weights and no download, deterministic, 384 features per patch:

* colour (192): 32-bin histograms (at half resolution) of six optical-density channels — OD of R, G, B and the
  haematoxylin / eosin / DAB concentrations from Ruifrok & Johnston's colour deconvolution —
  as square roots (Hellinger embedding: Euclidean distance between two patches then tracks
  the Hellinger distance between their stain distributions).
* texture (192): on three stain channels (H, E, mean OD) at four scales (224, 112, 56, 28 px,
  i.e. wavelengths of ~5 to ~40 input pixels; responses taken every second pixel at the two
  finest scales), four response maps — Gabor energy, max and
  mean over four orientations (max / mean is orientation-free, patches have no "up"), and
  the positive and negative parts of a Laplacian of Gaussian (blob-like nuclei and gaps) —
  each summarised by four statistics: mean, standard deviation, mean of 4x4 local maxima,
  spatial standard deviation of 8x8 local means; log1p-compressed.

It captures stain and texture well enough for a CPU pipeline to run end to end and for
near-duplicate and same-tissue retrieval; it is a CPU default, not a substitute for
pathology foundation models such as CONCH or UNI.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from threads_search.encoders.patch.registry import PatchEncoderSpec, register_patch_encoder
from threads_search.errors import InputError

INPUT_SIZE = 224
HISTOGRAM_BINS = 32
N_SCALES = 4
# Filter responses are sampled every second pixel at the two finest scales: the Gabor energy
# and the statistics pooled from it vary slowly there, and it quarters most of the work.
OUTPUT_STRIDES = (2, 2, 1, 1)
GABOR_ORIENTATIONS = 4
GABOR_WAVELENGTH_PX = 5.0
GABOR_SIGMA_PX = 2.2
LOG_SIGMA_PX = 1.5
KERNEL_SIZE = 11

# Stain optical-density vectors (rows: haematoxylin, eosin, DAB), Ruifrok & Johnston (2001).
STAIN_OD_VECTORS = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
# Histogram ranges per OD channel (R, G, B, H, E, D): the 0.5-99.5 % range of H&E tissue on
# an Aperio scan, widened a little; values outside land in the end bins.
HISTOGRAM_RANGES = ((0.0, 1.5), (0.0, 1.5), (0.0, 1.5), (-0.2, 1.5), (-0.3, 0.9), (-0.2, 0.8))
COLOUR_DIM = len(HISTOGRAM_RANGES) * HISTOGRAM_BINS
TEXTURE_DIM = 3 * N_SCALES * 4 * 4
OUTPUT_DIM = COLOUR_DIM + TEXTURE_DIM


def _gabor_kernels() -> torch.Tensor:
    """(2 * orientations, k, k) even (cosine) then odd (sine) zero-mean Gabor kernels."""
    half = KERNEL_SIZE // 2
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    envelope = torch.exp(-(x**2 + y**2) / (2 * GABOR_SIGMA_PX**2))
    even, odd = [], []
    for index in range(GABOR_ORIENTATIONS):
        theta = math.pi * index / GABOR_ORIENTATIONS
        phase = 2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / GABOR_WAVELENGTH_PX
        cosine = envelope * torch.cos(phase)
        even.append(cosine - envelope * cosine.sum() / envelope.sum())  # no response to flat regions
        odd.append(envelope * torch.sin(phase))
    kernels = torch.stack(even + odd)
    return kernels / kernels.abs().sum(dim=(1, 2), keepdim=True)


def _log_kernel() -> torch.Tensor:
    """(k, k) zero-mean Laplacian-of-Gaussian kernel, positive on dark-centred blobs of OD."""
    half = KERNEL_SIZE // 2
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    radius2 = (x**2 + y**2) / (2 * LOG_SIGMA_PX**2)
    kernel = -(1 - radius2) * torch.exp(-radius2)
    kernel = kernel - kernel.mean()
    return kernel / kernel.abs().sum()


class StainTextureEncoder(nn.Module):
    """(b, 3, 224, 224) RGB in [0, 1] -> (b, 384) float32 stain and texture features."""

    def __init__(self) -> None:
        super().__init__()
        stains = torch.tensor(STAIN_OD_VECTORS, dtype=torch.float64)
        stains = stains / stains.norm(dim=1, keepdim=True)
        self.register_buffer("od_to_stains", torch.linalg.inv(stains).float(), persistent=False)
        bank = torch.cat([_gabor_kernels(), _log_kernel()[None]]).float()  # (2 * orientations + 1, k, k)
        self.register_buffer("filter_bank", bank.repeat(3, 1, 1).unsqueeze(1), persistent=False)
        ranges = torch.tensor(HISTOGRAM_RANGES, dtype=torch.float32)
        self.register_buffer("histogram_low", ranges[:, 0], persistent=False)
        self.register_buffer("histogram_width", ranges[:, 1] - ranges[:, 0], persistent=False)

    def optical_density(self, rgb: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) RGB in [0, 1] -> (b, 6, h, w): OD of R, G, B, then H, E, D concentrations."""
        od = -torch.log10((rgb * 255.0 + 1.0) / 256.0)
        stains = torch.einsum("bchw,cs->bshw", od, self.od_to_stains)
        return torch.cat([od, stains], dim=1)

    def colour_histograms(self, od: torch.Tensor) -> torch.Tensor:
        """(b, 6, h, w) -> (b, 192): square roots of per-channel 32-bin histograms (each sums to 1).

        Counted on 2x2-averaged densities: a quarter of the work, less sensor noise, and (unlike
        taking every second pixel) unchanged by quarter turns and flips of the patch.
        """
        batch, channels = od.shape[:2]
        sample = F.avg_pool2d(od, 2).reshape(batch, channels, -1)
        position = (sample - self.histogram_low[:, None]) / self.histogram_width[:, None]
        bins = (position * HISTOGRAM_BINS).floor_().clamp_(0, HISTOGRAM_BINS - 1).long()
        bins = bins.reshape(batch * channels, -1)
        counts = torch.zeros(batch * channels, HISTOGRAM_BINS, device=od.device)
        counts.scatter_add_(1, bins, torch.ones(bins.shape, device=od.device))
        frequencies = counts / bins.shape[-1]
        return frequencies.sqrt().view(batch, channels * HISTOGRAM_BINS)

    def texture_statistics(self, od: torch.Tensor) -> torch.Tensor:
        """(b, 6, h, w) -> (b, 192) log1p filter-bank statistics over scales."""
        image = torch.stack([od[:, 3], od[:, 4], od[:, :3].mean(dim=1)], dim=1)
        per_scale = []
        for scale in range(N_SCALES):
            if scale:
                image = F.avg_pool2d(image, 2)
            per_scale.append(self._scale_statistics(image, stride=OUTPUT_STRIDES[scale]))
        return torch.log1p(10.0 * torch.cat(per_scale, dim=1))

    def _scale_statistics(self, image: torch.Tensor, stride: int) -> torch.Tensor:
        """(b, 3, h, w) stain channels at one scale -> (b, 3 channels * 4 maps * 4 statistics)."""
        batch = image.shape[0]
        padded = F.pad(image, [KERNEL_SIZE // 2] * 4, mode="reflect")
        # channels_last lets the grouped convolution use the fast CPU kernel (about 2x).
        padded = padded.contiguous(memory_format=torch.channels_last)
        responses = F.conv2d(padded, self.filter_bank, stride=stride, groups=3).contiguous()
        responses = responses.view(batch, 3, 2 * GABOR_ORIENTATIONS + 1, *responses.shape[-2:])
        energy = torch.hypot(responses[:, :, :GABOR_ORIENTATIONS], responses[:, :, GABOR_ORIENTATIONS:-1])
        log_response = responses[:, :, -1]
        maps = (energy.amax(dim=2), energy.mean(dim=2), F.relu(log_response), F.relu(-log_response))
        return torch.stack([self._map_statistics(m) for m in maps], dim=2).flatten(1)  # (b, 3 * 4 * 4)

    @staticmethod
    def _map_statistics(response: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) response map -> (b, 3, 4): mean, std, mean 4x4 local max, spread of 8x8 means."""
        variance, mean = torch.var_mean(response.flatten(2), dim=2, unbiased=False)
        local_max = F.max_pool2d(response, 4, ceil_mode=True).mean(dim=(2, 3))
        local_mean_spread = F.avg_pool2d(response, 8, ceil_mode=True).flatten(2).std(dim=2, unbiased=False)
        return torch.stack([mean, variance.sqrt(), local_max, local_mean_spread], dim=2)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        od = self.optical_density(rgb.float())
        return torch.cat([self.colour_histograms(od), self.texture_statistics(od)], dim=1)


@register_patch_encoder(
    "builtin_stain_texture",
    input_size=INPUT_SIZE,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    output_dim=OUTPUT_DIM,
    description=(
        "CPU default, no download: stain histograms in optical-density/HED space + a fixed "
        "multi-scale Gabor/LoG filter bank (384-d); not a substitute for CONCH or UNI"
    ),
)
def build_stain_texture(spec: PatchEncoderSpec, weights) -> tuple[PatchEncoderSpec, nn.Module]:
    if weights is not None:
        raise InputError(f"{weights}: '{spec.name}' has no learned weights; drop --weights")
    return spec, StainTextureEncoder()
