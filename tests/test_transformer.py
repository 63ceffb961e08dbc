import pytest
import torch

from conftest import step_through
from seqrl.nn.transformer import CausalTransformer


def model(window, dtype=torch.float32):
    torch.manual_seed(0)
    return CausalTransformer(32, n_layers=2, n_heads=4, window=window, dropout=0.0).to(dtype).eval()


@pytest.mark.parametrize("T,window", [(6, 9), (25, 7)])
def test_step_equals_forward_across_resets(T, window):
    m = model(window)
    B = 3
    x = torch.randn(B, T, 32)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[1, T // 2] = True
    reset[2, 1] = True
    y, final = m(x, m.initial_state(B, "cpu"), reset=reset)
    ys, state = step_through(m, x, m.initial_state(B, "cpu"), reset)
    torch.testing.assert_close(ys, y, atol=1e-5, rtol=1e-5)
    assert torch.equal(state.valid, final.valid)
    for a, b in zip(state.k, final.k):
        torch.testing.assert_close(a[state.valid[:, None, :, None].expand_as(a)],
                                   b[final.valid[:, None, :, None].expand_as(b)], atol=1e-5, rtol=1e-5)


def test_segments_continue_from_state():
    m = model(window=5, dtype=torch.float64)
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    y, _ = m(x, m.initial_state(2, "cpu", torch.float64))
    y1, s1 = m(x[:, :8], m.initial_state(2, "cpu", torch.float64))
    y2, _ = m(x[:, 8:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-12, rtol=1e-12)


def test_fused_causal_path_equals_masked_path():
    m = model(window=12)
    x = torch.randn(4, 12, 32)
    fast, _ = m(x)  # no state, no reset, T <= window: is_causal=True
    masked, _ = m(x, m.initial_state(4, "cpu"))
    torch.testing.assert_close(fast, masked, atol=1e-5, rtol=1e-5)


def test_window_limits_attention():
    m = model(window=4, dtype=torch.float64)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    y, _ = m(x, m.initial_state(1, "cpu", torch.float64))
    x2 = x.clone()
    x2[:, 0] += torch.randn(32, dtype=torch.float64)  # token 0 reaches token 9 only via 0->3->6->9: 3 hops > 2 layers
    y2, _ = m(x2, m.initial_state(1, "cpu", torch.float64))
    assert torch.allclose(y[:, 9], y2[:, 9]) and not torch.allclose(y[:, 3], y2[:, 3])
