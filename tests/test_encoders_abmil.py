"""ABMIL slide encoder: shapes, masking, streaming == one pass, attention, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from threads_search.encoders.abmil import ABMILSlideEncoder
from threads_search.errors import InputError, ModelMismatchError

torch.set_num_threads(1)


def small_encoder(in_dim: int = 16, seed: int = 0, **sizes) -> ABMILSlideEncoder:
    torch.manual_seed(seed)
    config = {"hidden_dim": 12, "attn_dim": 6, "out_dim": 10, **sizes}
    return ABMILSlideEncoder(in_dim, **config).eval()


def bag(n: int, dim: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("in_dim", [768, 1024, 1536])
def test_default_sizes_give_1024_d_float32_for_every_patch_encoder_width(in_dim):
    torch.manual_seed(0)
    encoder = ABMILSlideEncoder(in_dim).eval()
    x = torch.randn(2, 5, in_dim)
    out = encoder(x)
    assert out.shape == (2, 1024) and out.dtype == torch.float32
    assert encoder.encode_bag(x[0].numpy()).shape == (1024,)


def test_heads_match_an_independent_per_head_gated_attention():
    encoder = small_encoder(n_heads=3)
    x = bag(9)
    with torch.no_grad():
        hidden = encoder.pre_attention(torch.from_numpy(x)).numpy().astype(np.float64)
    tanh_linear = encoder.attention.tanh_branch[0]
    sigmoid_linear = encoder.attention.sigmoid_branch[0]
    pooled = []
    for head in range(3):  # textbook gated attention (Ilse et al. 2018), one head at a time
        rows = slice(head * 6, (head + 1) * 6)
        v = np.tanh(hidden @ tanh_linear.weight[rows].detach().numpy().T + tanh_linear.bias[rows].detach().numpy())
        u = 1 / (1 + np.exp(-(hidden @ sigmoid_linear.weight[rows].detach().numpy().T
                              + sigmoid_linear.bias[rows].detach().numpy())))
        scores = (v * u) @ encoder.attention.score_weight[head].detach().numpy() + encoder.attention.score_bias[head].item()
        weights = np.exp(scores - scores.max())
        pooled.append((weights / weights.sum()) @ hidden)
    projection = encoder.projection
    expected = np.concatenate(pooled) @ projection.weight.detach().numpy().T + projection.bias.detach().numpy()
    with torch.no_grad():
        got = encoder(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_mask_ignores_padding_and_packed_equals_padded():
    encoder = small_encoder()
    bags = [bag(7, seed=2), bag(3, seed=3), bag(11, seed=4)]
    padded = torch.full((3, 11, 16), 1e3)  # garbage in the padding must not leak in
    mask = torch.zeros(3, 11, dtype=torch.bool)
    for i, b in enumerate(bags):
        padded[i, : len(b)] = torch.from_numpy(b)
        mask[i, : len(b)] = True
    with torch.no_grad():
        batch = encoder(padded, mask)
        separate = torch.cat([encoder(torch.from_numpy(b)[None]) for b in bags])
        packed = encoder.forward_packed(torch.from_numpy(np.concatenate(bags)), torch.tensor([7, 3, 11]))
    torch.testing.assert_close(batch, separate, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter_through_the_masked_path():
    encoder = small_encoder().train()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    encoder(x, mask).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_streaming_encode_bag_equals_one_pass(chunk_size):
    encoder = small_encoder()
    x = bag(300)
    with torch.no_grad():
        one_pass = encoder(torch.from_numpy(x)[None])[0]
        hidden = encoder.pre_attention(torch.from_numpy(x))
        one_pass_attention = torch.softmax(encoder.attention(hidden), dim=0).T
    embedding, attention = encoder.encode_bag(x, chunk_size=chunk_size, return_attention=True)
    torch.testing.assert_close(embedding, one_pass, atol=1e-5, rtol=0)
    assert attention.shape == (2, 300)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(attention, one_pass_attention, atol=1e-6, rtol=1e-4)


def test_encode_bag_is_permutation_invariant_and_accepts_float16_and_tensors():
    encoder = small_encoder()
    x = bag(50).astype(np.float16)
    reference = encoder.encode_bag(x.astype(np.float32))
    shuffled = x[np.random.default_rng(0).permutation(50)]
    torch.testing.assert_close(encoder.encode_bag(shuffled, chunk_size=8), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_bag(torch.from_numpy(x)), reference, atol=1e-6, rtol=0)


def test_encode_bag_restores_training_mode_and_is_deterministic():
    encoder = small_encoder().train()
    x = bag(40)
    first, second = encoder.encode_bag(x), encoder.encode_bag(x)
    assert encoder.training  # eval mode only for the call
    assert torch.equal(first, second)  # dropout off


def test_single_patch_bag_puts_all_attention_on_it():
    encoder = small_encoder()
    _, attention = encoder.encode_bag(bag(1), return_attention=True)
    torch.testing.assert_close(attention, torch.ones(2, 1))


def test_refuses_wrong_dimension_empty_bag_and_non_finite_values():
    encoder = small_encoder(in_dim=16)
    with pytest.raises(ModelMismatchError, match="dimension 12 .* expects 16"):
        encoder.encode_bag(bag(5, dim=12))
    with pytest.raises(ModelMismatchError, match="expects 16"):
        encoder(torch.zeros(1, 3, 12))
    with pytest.raises(InputError, match="empty"):
        encoder.encode_bag(np.zeros((0, 16), dtype=np.float32))
    with pytest.raises(InputError, match="2-D"):
        encoder.encode_bag(np.zeros(16, dtype=np.float32))
    broken = bag(20)
    broken[13, 2] = np.nan
    with pytest.raises(InputError, match="NaN or Inf .*row 13"):
        encoder.encode_bag(broken, chunk_size=4)
    with pytest.raises(InputError, match="overflow .*row 0"):
        encoder.encode_bag(np.full((3, 16), 3e38, dtype=np.float32))


def test_batches_with_an_empty_bag_are_refused():
    encoder = small_encoder()
    mask = torch.tensor([[True, True], [False, False]])
    with pytest.raises(InputError, match="bag 1 of the batch has no real patch"):
        encoder(torch.zeros(2, 2, 16), mask)
    with pytest.raises(InputError, match="must be >= 1"):
        encoder.forward_packed(torch.zeros(3, 16), torch.tensor([3, 0]))


def test_centred_patches_make_every_path_blind_to_a_per_slide_offset():
    """centre_patches: a constant added to every patch of a slide (a site's stain offset) leaves
    its embedding unchanged, and the padded, packed and streamed paths agree."""
    encoder = small_encoder(centre_patches=True)
    plain = small_encoder()  # same seed, same weights, no centring
    bags = [bag(7, seed=2), bag(4, seed=3)]
    offset = np.random.default_rng(4).normal(scale=3.0, size=16).astype(np.float32)
    padded = torch.zeros(2, 7, 16)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    for row, b in enumerate(bags):
        padded[row, : len(b)], mask[row, : len(b)] = torch.from_numpy(b), True
    with torch.no_grad():
        from_padded = encoder(padded, mask)
        from_packed = encoder.forward_packed(torch.from_numpy(np.concatenate(bags)), torch.tensor([7, 4]))
        shifted = encoder.forward_packed(torch.from_numpy(np.concatenate([b + offset for b in bags])), torch.tensor([7, 4]))
        unshifted_plain = plain.forward_packed(torch.from_numpy(np.concatenate(bags)), torch.tensor([7, 4]))
        shifted_plain = plain.forward_packed(torch.from_numpy(np.concatenate([b + offset for b in bags])), torch.tensor([7, 4]))
        one_bag = encoder(torch.from_numpy(bags[0])[None])
    streamed = torch.stack([encoder.encode_bag(b + offset, chunk_size=3) for b in bags])
    torch.testing.assert_close(from_padded, from_packed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, from_packed, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(streamed, from_packed, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one_bag[0], from_packed[0], atol=1e-5, rtol=1e-5)
    assert (shifted_plain - unshifted_plain).abs().max() > 1e-2  # without centring the offset shows


def test_centre_patches_is_recorded_and_restored_with_the_model():
    from threads_search.encoders.model import ThreadsModel

    model = ThreadsModel.create(in_dim=16, out_dim=8, hidden_dim=12, attn_dim=6, centre_patches=True)
    config, tensors = model.export()
    restored = ThreadsModel.from_export("threads-abmil", config, tensors)
    assert config["model"]["centre_patches"] is True and restored.slide_encoder.centre_patches
    x = bag(9)
    np.testing.assert_allclose(restored.encode_slide(x + 5.0), model.encode_slide(x), atol=1e-5)
