"""CausalTransformer specifics: the fused causal path against the masked one, the attention window.
The backbone contract (step == forward, resets, segments, dtypes) is tests/test_backbones.py."""

import dataclasses
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from seqrl.nn.transformer import CausalTransformer


def model(window, dtype=torch.float32):
    torch.manual_seed(0)
    return CausalTransformer(32, n_layers=2, n_heads=4, window=window, dropout=0.0).to(dtype).eval()


def test_fused_path_equals_masked_path():
    """For T <= W, `forward(x)` (no state, no reset) runs the fused `is_causal=True` attention and
    `forward(x, initial_state)` the boolean-mask path: the same numbers in float64, for T < W and T = W.
    Env 0's tail is padding, as in a sampled window: its real tokens equal a forward of them alone."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False) and kwargs.get("attn_mask") is None)
        return sdpa(*args, **kwargs)

    m = model(window=12, dtype=torch.float64)
    for T in (1, 7, 12):
        x = torch.randn(3, T, 32, dtype=torch.float64)
        x[0, T // 2:] = 0.0  # env 0: the tail is padding
        with mock.patch.object(F, "scaled_dot_product_attention", spy):
            calls.clear()
            fast, s_fast = m(x)
            assert calls == [True] * m.n_layers  # the fused path ran, in every layer
            calls.clear()
            masked, s_masked = m(x, m.initial_state(3, "cpu", torch.float64))
            assert calls == [False] * m.n_layers
        torch.testing.assert_close(fast, masked, atol=1e-12, rtol=1e-12)
        if T > 1:
            torch.testing.assert_close(fast[0, :T // 2], m(x[:1, :T // 2])[0][0], atol=1e-12, rtol=1e-12)
        assert torch.equal(s_fast.valid, s_masked.valid)
        for a, b in zip(s_fast.k + s_fast.v, s_masked.k + s_masked.v):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    calls.clear()
    with mock.patch.object(F, "scaled_dot_product_attention", spy):
        m(torch.randn(1, 13, 32, dtype=torch.float64))  # T > W: the masked path
        m(torch.randn(1, 5, 32, dtype=torch.float64), reset=torch.zeros(1, 5, dtype=torch.bool))  # a reset tensor
    assert not any(calls)


def test_window_limits_attention():
    m = model(window=4, dtype=torch.float64)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    y, _ = m(x, m.initial_state(1, "cpu", torch.float64))
    x2 = x.clone()
    x2[:, 0] += torch.randn(32, dtype=torch.float64)  # token 0 reaches token 9 only via 0->3->6->9: 3 hops > 2 layers
    y2, _ = m(x2, m.initial_state(1, "cpu", torch.float64))
    assert torch.allclose(y[:, 9], y2[:, 9]) and not torch.allclose(y[:, 3], y2[:, 3])


def test_rotary_positions_make_attention_see_order_and_only_distances_count():
    """With rope the output depends on the order of the tokens (without it, a token's output is the same for any
    order of the tokens before it: attention is a weighted sum over a set), and a segment read at positions
    1000.. equals the same segment read at 0..: rotations cancel to the distance between two tokens.
    Odd head sizes are refused."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    perm = x[:, [2, 0, 1, 3, 4, 5]]  # the first three tokens shuffled; the last three the same
    for rope in (False, True):
        torch.manual_seed(0)
        m = CausalTransformer(32, n_layers=1, n_heads=4, window=8, dropout=0.0, rope=rope).double().eval()
        same = torch.allclose(m(x)[0][:, -1], m(perm)[0][:, -1], atol=1e-12)
        assert same is (not rope)
        if rope:
            s = m.initial_state(2, "cpu", torch.float64)
            far = dataclasses.replace(s, pos=torch.full((2,), 1000))
            y0, s0 = m(x, s)
            y1, s1 = m(x, far)
            torch.testing.assert_close(y0, y1, atol=1e-9, rtol=1e-9)
            assert s0.pos.tolist() == [6, 6] and s1.pos.tolist() == [1006, 1006]
    with pytest.raises(ValueError, match="even head size"):
        CausalTransformer(12, n_layers=1, n_heads=4, window=4, rope=True)
