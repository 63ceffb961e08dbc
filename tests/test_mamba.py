import pytest
import torch
import torch.nn.functional as F

from conftest import step_through
from seqrl.kernels.scan import selective_scan_ref
from seqrl.nn.mamba import MambaBackbone, MambaMixer, MambaState, MixerState, grouped_causal_conv


def backbone(fine_group=0, d=16, n_layers=2):
    torch.manual_seed(0)
    return MambaBackbone(d, n_layers, d_state=4, d_conv=3, expand=2, fine_group=fine_group).eval()


def random_state(m: MambaBackbone, B: int, phase=None) -> MambaState:
    s = m.initial_state(B, "cpu")
    rnd = lambda ms: tuple(MixerState(torch.randn_like(x.conv), torch.randn_like(x.ssm)) for x in ms)  # noqa: E731
    ph = torch.zeros(B, dtype=torch.long) if phase is None else phase
    return MambaState(rnd(s.layers), rnd(s.fine), ph)


def assert_states_close(a: MambaState, b: MambaState):
    for sa, sb in zip(a.layers + a.fine, b.layers + b.fine):
        torch.testing.assert_close(sa.conv, sb.conv, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sa.ssm, sb.ssm, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.phase, b.phase)


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
    y, _ = m(x, MixerState(torch.zeros(2, 16, 3, dtype=torch.float64), torch.zeros(2, 16, 4)))
    torch.testing.assert_close(y, mixer_reference(m, x), atol=1e-6, rtol=1e-6)


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


@pytest.mark.parametrize("fine_group", [0, 3])
@pytest.mark.parametrize("given_state", [False, True])
def test_step_equals_forward_across_resets(fine_group, given_state):
    m = backbone(fine_group)
    B, T = 3, 14
    x = torch.randn(B, T, 16)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[1, 5] = reset[2, 1] = reset[2, 9] = True
    start = random_state(m, B, torch.tensor([0, 1, 2]) if fine_group else None) if given_state else m.initial_state(B, "cpu")
    y, final = m(x, start, reset=reset)
    ys, state = step_through(m, x, start, reset)
    torch.testing.assert_close(ys, y, atol=1e-5, rtol=1e-5)
    assert_states_close(state, final)


@pytest.mark.parametrize("fine_group", [0, 3])
def test_step_equals_forward_from_zero_state(fine_group):
    m = backbone(fine_group)
    x = torch.randn(2, 12, 16)
    y, final = m(x)  # no state: the batched fine-grained path
    ys, state = step_through(m, x, m.initial_state(2, "cpu"))
    torch.testing.assert_close(ys, y, atol=1e-5, rtol=1e-5)
    for a, b in zip(state.layers, final.layers):
        torch.testing.assert_close(a.ssm, b.ssm, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fine_group", [0, 3])
def test_two_segments_equal_one(fine_group):
    m = backbone(fine_group)
    x = torch.randn(2, 20, 16)
    y, s = m(x)
    y1, s1 = m(x[:, :7])  # 7: the second segment starts mid-group
    y2, s2 = m(x[:, 7:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    assert_states_close(s2, s)


def test_a_new_episode_sees_nothing_of_the_last():
    m = backbone(3)
    x = torch.randn(1, 12, 16)
    reset = torch.zeros(1, 12, dtype=torch.bool)
    reset[0, 6] = True
    y, _ = m(x, random_state(m, 1, torch.tensor([2])), reset=reset)
    fresh, _ = m(x[:, 6:])
    torch.testing.assert_close(y[:, 6:], fresh, atol=1e-5, rtol=1e-5)


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
