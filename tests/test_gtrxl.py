"""GTrXL specifics: memory span, relative attention against a slow reference, gates near the identity at
init, no gradient into the memory. The backbone contract (step == forward, resets, segments, dtypes; GTrXL
and LSTM alike) is tests/test_backbones.py."""

import math

import torch

from seqrl.nn.gtrxl import GRUGate, GTrXL, sinusoid


def gtrxl(memory=5, dtype=torch.float32, n_layers=2):
    torch.manual_seed(0)
    return GTrXL(32, n_layers=n_layers, n_heads=4, memory=memory, d_ff=64).to(dtype).eval()


def test_memory_span_is_M_steps_per_layer():
    M = 4
    m = gtrxl(memory=M, dtype=torch.float64, n_layers=1)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 0] += torch.randn(32, dtype=torch.float64)  # not a constant: LayerNorm would remove it
    y2, _ = m(x2)
    assert not torch.allclose(y[:, M], y2[:, M])  # step M sees step 0 (distance M)
    torch.testing.assert_close(y[:, M + 1 :], y2[:, M + 1 :])  # beyond M steps: out of reach


def test_relative_attention_matches_slow_reference():
    torch.manual_seed(1)
    m = gtrxl(memory=3, dtype=torch.float64, n_layers=1)
    attn = m.blocks[0].attn
    with torch.no_grad():  # non-zero u, v so both biases are exercised
        attn.u.normal_()
        attn.v.normal_()
    B, T, M, d = 2, 4, 3, 32
    nh, hs = attn.nh, attn.hs
    ctx = torch.randn(B, M + T, d, dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [False, True, True]])  # env 1: oldest memory slot empty
    dist = torch.arange(T)[:, None] - torch.arange(-M, T)[None, :]
    mask = (dist >= 0) & (dist <= M) & torch.cat([valid, torch.ones(B, T, dtype=torch.bool)], 1)[:, None, :]
    out = attn(ctx[:, M:], ctx, dist.clamp(0, M), mask[:, None])
    # reference: one query, one key, one head at a time
    q = attn.q(ctx[:, M:]).view(B, T, nh, hs)
    k, v = attn.kv(ctx).view(B, M + T, 2, nh, hs).unbind(2)
    R = attn.r(sinusoid(torch.arange(M + 1), d).double()).view(M + 1, nh, hs)
    ref = torch.zeros(B, T, nh, hs, dtype=torch.float64)
    for b in range(B):
        for h in range(nh):
            for i in range(T):
                scores, vals = [], []
                for j in range(M + T):
                    if not mask[b, i, j]:
                        continue
                    delta = int(dist[i, j])
                    s = (q[b, i, h] + attn.u[h]) @ k[b, j, h] + (q[b, i, h] + attn.v[h]) @ R[delta, h]
                    scores.append(s / math.sqrt(hs))
                    vals.append(v[b, j, h])
                w = torch.softmax(torch.stack(scores), 0)
                ref[b, i, h] = (w[:, None] * torch.stack(vals)).sum(0)
    torch.testing.assert_close(out, attn.proj(ref.reshape(B, T, d)))


def test_gates_start_near_identity():
    torch.manual_seed(0)
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    near = GRUGate(32, gate_bias=2.0)
    far = GRUGate(32, gate_bias=-2.0)
    far.load_state_dict({**near.state_dict(), "bg": far.bg.detach()})  # same weights, opposite bias
    dev_near = (near(x, y) - x).norm() / x.norm()
    dev_far = (far(x, y) - x).norm() / x.norm()
    assert dev_near < 0.35 < dev_far


def test_gradients_stop_at_the_memory():
    m = gtrxl(memory=4).train()
    _, s = m(torch.randn(2, 4, 32))
    x = torch.randn(2, 3, 32, requires_grad=True)
    y, s2 = m(x, s)
    y.sum().backward()
    assert x.grad is not None and all(not t.requires_grad for t in s2.mem)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_a_fresh_memory_equals_an_empty_one():
    # forward(x) leaves the fresh memory's key columns out; forward(x, initial_state) attends over them, masked
    m = gtrxl(memory=6, dtype=torch.float64)
    x = torch.randn(3, 9, 32, dtype=torch.float64)
    reset = torch.zeros(3, 9, dtype=torch.bool)
    reset[1, 4] = True  # an episode starts inside one row's segment
    y, s = m(x, reset=reset)
    y0, s0 = m(x, m.initial_state(3, "cpu", torch.float64), reset=reset)
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    assert torch.equal(s.valid, s0.valid)
    for a, b in zip(s.mem, s0.mem):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    y.sum().backward()  # and the gradients agree
    g = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y0.sum().backward()
    for a, b in zip(g, (p.grad for p in m.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
