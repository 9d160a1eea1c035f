"""Slide encoder: multi-head gated-attention MIL (ABMIL), after TANGLE / THREADS.

A slide is a bag of patch features (n_patches, in_dim). Each patch goes through a small
pre-attention MLP; every attention head scores each patch (gated: tanh branch x sigmoid
branch), turns the scores into a softmax over the bag's patches and pools the hidden
features with it; the pooled vectors of all heads are concatenated and projected to the
shared embedding space (out_dim, 1024 by default).

Two entry points:
- `forward(x, mask)` for training on padded batches (B, N, in_dim) with a validity mask;
- `encode_bag(features)` for inference on one slide of any size: patches are streamed in
  chunks with an online (running-max, log-sum-exp) softmax, so memory stays bounded by the
  chunk size while the result equals one full pass to float tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from threads_search.errors import InputError, ModelMismatchError

DEFAULT_CHUNK_SIZE = 4096


def _mlp_block(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))


class GatedAttentionScores(nn.Module):
    """All heads' gated attention scores in one pass: (..., hidden_dim) -> (..., n_heads).

    Head h scores a patch as w_h . (tanh(V_h x) * sigmoid(U_h x)) + b_h; the heads'
    branches are stacked into one Linear each so that the heads cost one matmul, not n_heads.
    """

    def __init__(self, hidden_dim: int, attn_dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_dim = attn_dim
        self.tanh_branch = nn.Sequential(nn.Linear(hidden_dim, n_heads * attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.sigmoid_branch = nn.Sequential(nn.Linear(hidden_dim, n_heads * attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score_weight = nn.Parameter(torch.empty(n_heads, attn_dim))
        self.score_bias = nn.Parameter(torch.zeros(n_heads))
        nn.init.uniform_(self.score_weight, -1.0 / math.sqrt(attn_dim), 1.0 / math.sqrt(attn_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gated = self.tanh_branch(hidden) * self.sigmoid_branch(hidden)
        # Head h only reads its own attn_dim slice: one matmul with a block-diagonal
        # (n_heads * attn_dim, n_heads) matrix, much faster on CPU than broadcast-multiply + sum.
        per_head = torch.block_diag(*self.score_weight.unbind(0)).T
        return gated @ per_head.to(gated.dtype) + self.score_bias


class ABMILSlideEncoder(nn.Module):
    """Multi-head gated-attention MIL slide encoder.

    Args:
        in_dim: patch feature dimension (768 CONCH v1.5, 1024 UNI, 1536 UNI2-h).
        hidden_dim: width of the pre-attention MLP (512 in TANGLE).
        n_layers: number of pre-attention blocks Linear->LayerNorm->GELU->Dropout.
        n_heads: number of gated attention heads.
        attn_dim: width of each head's tanh / sigmoid branch.
        out_dim: embedding dimension (1024).
        dropout: dropout of the pre-attention blocks (0.1).
        attn_dropout: dropout inside the attention branches (0.25).
        centre_patches: subtract each slide's mean patch feature before the MLP. A site's stain
            or scanner shifts every patch of its slides alike, so the centred features no
            longer carry that offset (what stays is each patch's difference from its slide);
            needs no site label, so it applies to a single query slide from a new site.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        n_layers: int = 1,
        n_heads: int = 2,
        attn_dim: int = 256,
        out_dim: int = 1024,
        dropout: float = 0.1,
        attn_dropout: float = 0.25,
        centre_patches: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, n_layers, n_heads, attn_dim, out_dim) < 1:
            raise InputError(f"ABMIL sizes must be positive, got in_dim={in_dim} hidden_dim={hidden_dim} "
                             f"n_layers={n_layers} n_heads={n_heads} attn_dim={attn_dim} out_dim={out_dim}")
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.n_heads = n_heads
        self.out_dim = out_dim
        self.centre_patches = bool(centre_patches)
        widths = [in_dim] + [hidden_dim] * n_layers
        self.pre_attention = nn.Sequential(*(_mlp_block(a, b, dropout) for a, b in zip(widths[:-1], widths[1:])))
        self.attention = GatedAttentionScores(hidden_dim, attn_dim, n_heads, attn_dropout)
        self.projection = nn.Linear(n_heads * hidden_dim, out_dim)

    # -- training path -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a padded batch of bags.

        Args:
            x: (B, N, in_dim) float patch features; rows where `mask` is False are padding.
            mask: (B, N) bool, True for real patches; None means every row is real.
                Every bag needs at least one real patch.
        Returns:
            (B, out_dim) slide embeddings (not normalised).
        """
        self._check_dim(x.shape[-1])
        if mask is None:
            if self.centre_patches:
                x = x - x.mean(dim=1, keepdim=True)
            hidden = self.pre_attention(x)
            return self._pool(hidden, self.attention(hidden))
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            raise InputError(f"bag {int(empty.nonzero()[0, 0])} of the batch has no real patch (mask all False)")
        # The MLP and the attention branches only see the real patches (packed), so a
        # batch of uneven bags costs what its patches cost, not B x longest bag.
        patches = x[mask]
        if self.centre_patches:
            patches = self._centred(patches, mask.sum(dim=1))
        return self._pool_packed(patches, mask)

    def forward_packed(self, patches: torch.Tensor, bag_sizes: torch.Tensor) -> torch.Tensor:
        """Embed a batch of bags given back to back, without padding the inputs.

        Args:
            patches: (sum(bag_sizes), in_dim) float, bag 0's patches first, then bag 1's ...
            bag_sizes: (B,) int64, each >= 1.
        Returns:
            (B, out_dim) slide embeddings (not normalised); equal to `forward` on the padded batch.
        """
        self._check_dim(patches.shape[-1])
        if bool((bag_sizes < 1).any()) or int(bag_sizes.sum()) != patches.shape[0]:
            raise InputError(f"bag sizes {bag_sizes.tolist()} must be >= 1 and sum to the {patches.shape[0]} patches given")
        positions = torch.arange(int(bag_sizes.max()), device=patches.device)
        if self.centre_patches:
            patches = self._centred(patches, bag_sizes.to(patches.device))
        return self._pool_packed(patches, positions[None, :] < bag_sizes.to(patches.device)[:, None])

    @staticmethod
    def _centred(patches: torch.Tensor, bag_sizes: torch.Tensor) -> torch.Tensor:
        """Back-to-back bags' patches minus their own bag's mean patch."""
        bag_of_patch = torch.repeat_interleave(torch.arange(bag_sizes.numel(), device=patches.device), bag_sizes)
        sums = patches.new_zeros(bag_sizes.numel(), patches.shape[-1]).index_add_(0, bag_of_patch, patches)
        return patches - (sums / bag_sizes[:, None].to(patches.dtype))[bag_of_patch]

    def _pool_packed(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`patches` are the rows of a (B, N, in_dim) batch where `mask` (B, N) is True."""
        hidden_real = self.pre_attention(patches)
        scores_real = self.attention(hidden_real)
        hidden = hidden_real.new_zeros(*mask.shape, hidden_real.shape[-1])
        hidden[mask] = hidden_real
        scores = scores_real.new_full((*mask.shape, self.n_heads), float("-inf"))
        scores[mask] = scores_real
        return self._pool(hidden, scores)

    def _pool(self, hidden: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden_dim) features, (B, N, n_heads) scores (-inf = padding) -> (B, out_dim)."""
        weights = torch.softmax(scores.float(), dim=1).to(hidden.dtype)  # softmax over patches
        pooled = torch.einsum("bnh,bnd->bhd", weights, hidden)
        return self.projection(pooled.flatten(1))

    # -- inference path ------------------------------------------------------------------
    @torch.no_grad()
    def encode_bag(
        self,
        features: np.ndarray | torch.Tensor,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed one slide of any size in bounded memory (eval mode, no gradients).

        Args:
            features: (n_patches, in_dim) patch features, any float dtype (float16 is
                converted chunk by chunk, never as a whole).
            chunk_size: patches per chunk; memory is O(chunk_size x hidden_dim).
            return_attention: also return the attention weights.
        Returns:
            (out_dim,) float32 CPU embedding (not normalised); with `return_attention`, also
            (n_heads, n_patches) float32 attention weights, each head's row summing to one.
        """
        n_patches = self._check_bag(features)
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            running_max = torch.full((self.n_heads,), float("-inf"), device=device)
            running_sum = torch.zeros(self.n_heads, device=device)
            running_pool = torch.zeros(self.n_heads, self.hidden_dim, device=device)
            all_scores = [] if return_attention else None
            centre = self._bag_mean(features, n_patches, chunk_size, device) if self.centre_patches else None
            for start in range(0, n_patches, chunk_size):
                chunk = _chunk_as_float32(features, start, start + chunk_size, device)
                if centre is not None:
                    chunk = chunk - centre
                hidden = self.pre_attention(chunk)
                scores = self.attention(hidden)  # (c, H)
                _check_finite(scores, chunk, start)
                new_max = torch.maximum(running_max, scores.max(dim=0).values)
                # Rescale what was accumulated under the old maximum (online softmax).
                rescale = torch.exp(running_max - new_max)
                exp_scores = torch.exp(scores - new_max)  # (c, H)
                running_sum = running_sum * rescale + exp_scores.sum(dim=0)
                running_pool = running_pool * rescale[:, None] + exp_scores.T @ hidden
                running_max = new_max
                if all_scores is not None:
                    all_scores.append(scores)
            pooled = running_pool / running_sum[:, None]
            embedding = self.projection(pooled.flatten()).float().cpu()
            if all_scores is None:
                return embedding
            scores = torch.cat(all_scores).T  # (H, N)
            attention = torch.exp(scores - running_max[:, None]) / running_sum[:, None]
            return embedding, attention.float().cpu()
        finally:
            self.train(was_training)

    @staticmethod
    def _bag_mean(features, n_patches: int, chunk_size: int, device: torch.device) -> torch.Tensor:
        """The bag's mean patch, summed chunk by chunk in float64 (a first pass over the bag)."""
        total = None
        for start in range(0, n_patches, chunk_size):
            chunk = _chunk_as_float32(features, start, start + chunk_size, device).double().sum(dim=0)
            total = chunk if total is None else total + chunk
        return (total / n_patches).float()

    # -- validation ----------------------------------------------------------------------
    def _check_dim(self, got: int) -> None:
        if got != self.in_dim:
            raise ModelMismatchError(f"patch features have dimension {got} but the slide encoder expects {self.in_dim}; "
                                     "they come from a different patch encoder than the model was trained on")

    def _check_bag(self, features: np.ndarray | torch.Tensor) -> int:
        if features.ndim != 2:
            raise InputError(f"a bag of patch features must be 2-D (n_patches, dim), got shape {tuple(features.shape)}")
        self._check_dim(int(features.shape[1]))
        if features.shape[0] == 0:
            raise InputError("the bag of patch features is empty (0 patches)")
        return int(features.shape[0])


def _chunk_as_float32(features: np.ndarray | torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows [start, stop) as a float32 tensor on `device`."""
    if isinstance(features, torch.Tensor):
        return features[start:stop].to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.asarray(features[start:stop], dtype=np.float32)).to(device)


def _check_finite(scores: torch.Tensor, chunk: torch.Tensor, start: int) -> None:
    """Refuse NaN / Inf features. A non-finite input value makes its whole row of scores
    non-finite (NaN * 0 is NaN, LayerNorm spreads Inf), so checking the (chunk, n_heads)
    scores is as strict as checking the (chunk, in_dim) input, at a fraction of the cost."""
    if bool(torch.isfinite(scores).all()):
        return
    bad_input = (~torch.isfinite(chunk)).any(dim=1)
    bad = bad_input if bool(bad_input.any()) else (~torch.isfinite(scores)).any(dim=1)
    row = start + int(bad.nonzero()[0, 0])
    cause = "contain NaN or Inf" if bool(bad_input.any()) else "overflow (values too large)"
    raise InputError(f"patch features {cause} (first at row {row})")
