"""The backbone contract (docs: ARCHITECTURE.md, "Contracts"), one parametrised module for every backbone
in seqrl/nn/:

    forward(x (B, T, d), state=None, reset=None) -> (y (B, T, d), state)   causal, continuing from state
    initial_state(batch, device, dtype)            step(x (B, d), state) -> (y (B, d), state)
    reset(state, done (B,)) -> state               state: a dataclass, returned, never kept on the module

Checked here: `step` repeated T times equals `forward` (1e-5 in float32, 1e-10 in float64), from an empty
and from a filled state, with and without episode resets inside the segment (a reset flag in `forward`
against `reset()` then `step`); the two final states equal (through the outputs of further steps, since
attention caches hold unused slots); `state=None` is the empty state; a reset starts an episode that sees
nothing of the one before; two segments equal one; dtypes; no state hidden on the module or mutated in place.

A new backbone joins by one entry in BACKBONES (a factory of a small float32 model of width D, in eval mode);
`test_every_backbone_in_nn_is_listed` fails until it does.
"""

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch

import seqrl.nn
from conftest import step_through
from seqrl.nn.rnn import GRU
from seqrl.nn.gtrxl import GTrXL
from seqrl.nn.rnn import LSTM
from seqrl.nn.mamba import MambaBackbone
from seqrl.nn.s4 import S4Backbone
from seqrl.nn.transformer import CausalTransformer

D, B = 16, 4  # model width; envs (each gets its own reset pattern, see `resets`)

BACKBONES = [  # name -> factory of a small model; windows and memories shorter than the longest T below
    pytest.param(lambda: CausalTransformer(D, n_layers=2, n_heads=4, window=5, dropout=0.0), id="transformer"),
    pytest.param(lambda: CausalTransformer(D, n_layers=2, n_heads=4, window=5, dropout=0.0, rope=True),
                 id="transformer-rope"),
    pytest.param(lambda: GTrXL(D, n_layers=2, n_heads=4, memory=5, d_ff=32), id="gtrxl"),
    pytest.param(lambda: MambaBackbone(D, n_layers=2, d_state=4, d_conv=3, expand=2), id="mamba"),
    pytest.param(lambda: MambaBackbone(D, n_layers=2, d_state=4, d_conv=3, expand=2, fine_group=3), id="mamba-fine3"),
    pytest.param(lambda: LSTM(D, n_layers=2), id="lstm"),
    pytest.param(lambda: GRU(D, n_layers=2), id="gru"),
    # S4: the scan path only (segments here are shorter than the default fft_min_len); with fft_min_len=1 the FFT
    # path wherever a segment has no episode start after its first step, the scan path elsewhere
    pytest.param(lambda: S4Backbone(D, n_layers=2, d_state=8, kind="s4d"), id="s4d-zoh"),
    pytest.param(lambda: S4Backbone(D, n_layers=2, d_state=8, kind="s4d", discretization="bilinear", s4d_init="inv",
                                    fft_min_len=1), id="s4d-bilinear-fft"),
    pytest.param(lambda: S4Backbone(D, n_layers=2, d_state=8, kind="s5", discretization="bilinear", blocks=2,
                                    fft_min_len=1), id="s5-bilinear-fft"),
]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def build(make, dtype=torch.float32):
    torch.manual_seed(0)
    return make().to(dtype).eval()


def resets(T: int) -> torch.Tensor:
    """(B, T) episode starts: env 0 none, env 1 one mid-segment, env 2 two (one right after the first
    step), env 3 at the segment's first step (its episode ends exactly at the segment boundary) and at its
    last (an episode of one step at the end)."""
    r = torch.zeros(B, T, dtype=torch.bool)
    r[1, T // 2] = True
    r[2, min(1, T - 1)] = r[2, max(T - 2, 0)] = True
    r[3, 0] = r[3, T - 1] = True
    return r


def filled_state(m, dtype):
    """A state after 7 tokens with a reset at token 2 in env 1, so envs stand at different places (for
    Mamba's fine-grained branch: different phases inside a group)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 7, D, generator=g, dtype=torch.float64).to(dtype)
    r = torch.zeros(B, 7, dtype=torch.bool)
    r[1, 2] = True
    return m(x, m.initial_state(B, "cpu", dtype), reset=r)[1]


def tensors(obj):
    """Every tensor in a state: dataclass fields, tuples and lists, depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from tensors(getattr(obj, f.name))
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors(o)


def assert_same_future(m, s1, s2, dtype, tol):
    """Two states are the same memory: further steps (and a further forward) from each give the same outputs.
    Raw tensors are not compared: a cache holds slots that no token will attend to."""
    x = torch.randn(B, 6, D, dtype=torch.float64).to(dtype)
    y1, _ = step_through(m, x, s1)
    y2, _ = step_through(m, x, s2)
    torch.testing.assert_close(y1, y2, atol=tol, rtol=tol)
    torch.testing.assert_close(m(x, s1)[0], m(x, s2)[0], atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("make", BACKBONES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("start", ["empty", "filled"])
@pytest.mark.parametrize("with_resets", [False, True], ids=["no-reset", "resets"])
@pytest.mark.parametrize("T", [4, 12, 13])  # <= and > the window / memory; whole and partial groups of 3
def test_step_equals_forward(make, dtype, start, with_resets, T):
    m = build(make, dtype)
    tol = TOL[dtype]
    state = m.initial_state(B, "cpu", dtype) if start == "empty" else filled_state(m, dtype)
    x = torch.randn(B, T, D, dtype=torch.float64).to(dtype)
    reset = resets(T) if with_resets else None
    with torch.no_grad():
        y, final = m(x, state, reset=reset)
        ys, stepped = step_through(m, x, state, reset)
        assert y.shape == (B, T, D) and ys.shape == (B, T, D)
        torch.testing.assert_close(ys, y, atol=tol, rtol=tol)
        assert_same_future(m, final, stepped, dtype, tol)
        if start == "empty":  # state=None is the empty state (and may take a faster path)
            y0, final0 = m(x, None, reset=reset)
            torch.testing.assert_close(y0, y, atol=tol, rtol=tol)
            assert_same_future(m, final0, final, dtype, tol)


@pytest.mark.parametrize("make", BACKBONES)
@pytest.mark.parametrize("start", ["empty", "filled"])
def test_a_reset_starts_an_episode_that_sees_nothing_before(make, start):
    """After a reset (flag in `forward`, or `reset()` on the state) the outputs equal a fresh forward on
    the new episode alone; without the reset they differ (so the check has power)."""
    m = build(make, torch.float64)
    state = m.initial_state(B, "cpu", torch.float64) if start == "empty" else filled_state(m, torch.float64)
    old, new = torch.randn(B, 5, D, dtype=torch.float64), torch.randn(B, 7, D, dtype=torch.float64)
    with torch.no_grad():
        fresh, fresh_state = m(new)
        reset = torch.zeros(B, 12, dtype=torch.bool)
        reset[:, 5] = True
        both, both_state = m(torch.cat([old, new], 1), state, reset=reset)
        torch.testing.assert_close(both[:, 5:], fresh, atol=1e-10, rtol=1e-10)
        assert_same_future(m, both_state, fresh_state, torch.float64, 1e-10)
        _, s = m(old, state)
        after, _ = m(new, m.reset(s, torch.ones(B, dtype=torch.bool)))
        torch.testing.assert_close(after, fresh, atol=1e-10, rtol=1e-10)
        leaky, _ = m(new, s)
        assert not torch.allclose(leaky, fresh, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", BACKBONES)
def test_reset_touches_only_the_done_envs(make):
    m = build(make, torch.float64)
    s = filled_state(m, torch.float64)
    done = torch.tensor([False, True, False, True])
    x = torch.randn(B, 3, D, dtype=torch.float64)
    with torch.no_grad():
        y_keep, _ = m(x, s)
        y_reset, _ = m(x, m.reset(s, done))
        y_fresh, _ = m(x)
    torch.testing.assert_close(y_reset[~done], y_keep[~done], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y_reset[done], y_fresh[done], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("make", BACKBONES)
@pytest.mark.parametrize("cut", [1, 5, 7])  # 7: the second segment starts inside a group of 3
def test_two_segments_equal_one(make, cut):
    m = build(make, torch.float64)
    x = torch.randn(B, 13, D, dtype=torch.float64)
    reset = resets(13)
    with torch.no_grad():
        y, s = m(x, None, reset=reset)
        y1, s1 = m(x[:, :cut], None, reset=reset[:, :cut])
        y2, s2 = m(x[:, cut:], s1, reset=reset[:, cut:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-10, rtol=1e-10)
    assert_same_future(m, s2, s, torch.float64, 1e-10)


@pytest.mark.parametrize("make", BACKBONES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dtypes(make, dtype):
    """initial_state(dtype) holds floating tensors of that dtype; forward, step and reset keep it; the
    outputs have the input's dtype."""
    m = build(make, dtype)
    s = m.initial_state(2, "cpu", dtype)
    floats = lambda st: [t for t in tensors(st) if t.is_floating_point()]  # noqa: E731
    assert floats(s) and all(t.dtype == dtype for t in floats(s)), [t.dtype for t in floats(s)]
    x = torch.randn(2, 5, D, dtype=dtype)
    with torch.no_grad():
        y, s1 = m(x, s)
        y0, s0 = m(x)
        yt, s2 = m.step(x[:, 0], s1)
        s3 = m.reset(s2, torch.tensor([True, False]))
    assert y.dtype == y0.dtype == yt.dtype == dtype
    for st in (s0, s1, s2, s3):
        assert all(t.dtype == dtype for t in floats(st)), [t.dtype for t in floats(st)]


@pytest.mark.parametrize("make", BACKBONES)
def test_state_is_returned_not_kept(make):
    """The state is a dataclass; forward, step and reset never change the state they are given, and the
    module keeps nothing between calls (the same call gives the same answer after other calls)."""
    m = build(make, torch.float64)
    s = filled_state(m, torch.float64)
    assert dataclasses.is_dataclass(s)
    before = [t.clone() for t in tensors(s)]
    x = torch.randn(B, 4, D, dtype=torch.float64)
    with torch.no_grad():
        y1, _ = m(x, s, reset=resets(4))
        m(torch.randn(B, 9, D, dtype=torch.float64))
        m.step(x[:, 0], s)
        m.reset(s, torch.ones(B, dtype=torch.bool))
        y2, _ = m(x, s, reset=resets(4))
    assert all(torch.equal(a, b) for a, b in zip(before, tensors(s)))
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)


def test_every_backbone_in_nn_is_listed():
    """Every class in seqrl/nn/ with the four contract methods has an entry in BACKBONES."""
    found = set()
    for info in pkgutil.iter_modules(seqrl.nn.__path__):
        mod = importlib.import_module(f"seqrl.nn.{info.name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and all(hasattr(cls, a) for a in ("forward", "step", "initial_state",
                                                                                  "reset")):
                found.add(cls)
    listed = {type(p.values[0]()) for p in BACKBONES}
    assert found, "no backbone found in seqrl/nn/"
    assert found <= listed, f"backbones without an entry in BACKBONES: {sorted(c.__name__ for c in found - listed)}"
