"""Mamba specifics: the mixer against a plain reference, init, scans inside groups, gradients (the causal
conv itself: tests/test_conv.py). The backbone contract (step == forward, resets, segments, dtypes; with and
without the fine-grained branch) is tests/test_backbones.py."""

import pytest
import torch
import torch.nn.functional as F

from seqrl.kernels.scan import selective_scan_ref
from seqrl.nn.mamba import MambaBackbone, MambaMixer


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


@pytest.mark.parametrize("T", [13, 2])
def test_mixer_from_no_state_equals_from_the_zero_state(T):
    """state=None (the conv from zeros, seqrl.kernels.conv) and an explicit zero state (the conv over the carried
    window) give the same output and the same state after the segment, also when T < W - 1."""
    torch.manual_seed(0)
    m = MambaMixer(8, d_state=4, d_conv=4, expand=2).double()
    x = torch.randn(2, T, 8, dtype=torch.float64)
    y, s = m(x)
    y0, s0 = m(x, m.initial_state(2, "cpu", torch.float64))
    torch.testing.assert_close(y, y0, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s.conv, s0.conv, atol=0, rtol=0)
    torch.testing.assert_close(s.ssm, s0.ssm, atol=1e-12, rtol=1e-12)


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
