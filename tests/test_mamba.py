"""Mamba specifics: the mixer against a plain reference, the grouped conv of the fine-grained branch, init,
scans inside groups, gradients. The backbone contract (step == forward, resets, segments, dtypes; with and
without the fine-grained branch) is tests/test_backbones.py."""

import pytest
import torch
import torch.nn.functional as F

from seqrl.kernels.scan import selective_scan_ref
from seqrl.nn.mamba import MambaBackbone, MambaMixer, grouped_causal_conv


def backbone(fine_group=0, d=16, n_layers=2):
    torch.manual_seed(0)
    return MambaBackbone(d, n_layers, d_state=4, d_conv=3, expand=2, fine_group=fine_group).eval()


def mixer_reference(m: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """The block written out plainly from a zero state: padded conv, the loop scan of the kernels module."""
    T = x.shape[1]
    xs, z = m.in_proj(x).chunk(2, -1)
    u = F.silu(F.conv1d(xs.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1,
                        groups=m.d_inner)[..., :T])  # (B, E, T)
    dbc = m.x_proj(u.transpose(1, 2))
    delta, B, C = dbc.split([m.dt_rank, m.d_state, m.d_state], -1)
    y, _ = selective_scan_ref(u, m.dt_proj(delta).transpose(1, 2), -torch.exp(m.A_log), B.transpose(1, 2),
                              C.transpose(1, 2), m.D, z.transpose(1, 2), delta_softplus=True)
    return m.out_proj(y.transpose(1, 2))


def test_mixer_matches_the_plain_reference():
    torch.manual_seed(0)
    m = MambaMixer(8, d_state=4, d_conv=4, expand=2).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y, _ = m(x, m.initial_state(2, "cpu", torch.float64))
    torch.testing.assert_close(y, mixer_reference(m, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("W,group", [(4, 3), (3, 2), (1, 3), (2, 5), (4, 1)])
def test_grouped_causal_conv_matches_conv1d_on_each_group(W, group):
    """Tap by tap equals PyTorch's depthwise conv1d run on each group alone from zeros, in float64, on a
    strided (non-contiguous) input as the mixer passes it; gradients by gradcheck."""
    torch.manual_seed(0)
    B, T, E = 2, 3 * group, 5
    x = torch.randn(B, T, 2 * E, dtype=torch.float64)[..., :E].requires_grad_()
    w = torch.randn(E, W, dtype=torch.float64, requires_grad=True)
    b = torch.randn(E, dtype=torch.float64, requires_grad=True)
    xg = F.pad(x.reshape(B * T // group, group, E).transpose(1, 2), (W - 1, 0))
    ref = F.conv1d(xg, w[:, None], b, groups=E).transpose(1, 2).reshape(B, T, E)
    torch.testing.assert_close(grouped_causal_conv(x, w, b, group), ref, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: grouped_causal_conv(x_, w_, b_, group), (x, w, b))
    if group > 1:
        with pytest.raises(ValueError, match="whole groups"):
            grouped_causal_conv(x[:, 1:], w, b, group)


def test_mamba_init():
    m = MambaMixer(32, d_state=16)
    A = -torch.exp(m.A_log)
    torch.testing.assert_close(A, -torch.arange(1.0, 17.0).expand(64, 16))
    assert torch.equal(m.D, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6 and m.dt_rank == 2


def test_fine_grained_branch_scans_inside_groups_only():
    """The fine branch equals the fine mixer run on each group alone; changing a token moves the coarse
    branch of later groups but the fine branch of its own group only."""
    m = backbone(3, n_layers=1)
    layer = m.layers[0]
    h = torch.randn(2, 9, 16)
    y, _ = layer.fine_forward(h, layer.fine.initial_state(2, "cpu"), torch.zeros(2, dtype=torch.long), True)
    for g in range(3):
        alone, _ = layer.fine(h[:, 3 * g: 3 * g + 3])
        torch.testing.assert_close(y[:, 3 * g: 3 * g + 3], alone, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mixer_reference(layer.fine, h[:, 3 * g: 3 * g + 3]), alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="whole groups"):
        layer.fine(h[:, :8], group=3)


def test_gradients_reach_every_parameter():
    m = backbone(3).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    y, _ = m(x)
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
