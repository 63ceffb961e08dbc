import numpy as np
import pytest
import torch

from conftest import make_episodes, stream_order
from seqrl.data.samplers import context_query, histories, sequences, windows, windows_at
from seqrl.data.store import ReplayStore
from seqrl.errors import DataError


def traced_store(spaces, lengths, streams=None, capacity=None, chunks=1, t0=None):
    """A store whose observation feature 0 is each step's global index, to trace sample positions; with a
    capacity and several chunks, the oldest episodes are evicted on the way. `t0` makes episodes pieces: one
    with t0 > 0 continues its stream's previous piece, which then ends neither terminated nor truncated."""
    eps = make_episodes(lengths)
    offset = 0
    for i, e in enumerate(eps):
        T = len(e["rew"])
        e["obs"][:, 0] = np.arange(offset, offset + T + 1)
        e["obs"][-1, 1] = 1000.0 + i  # the final observation differs from the next episode's first
        e["term"][-1] = i % 2 == 0  # some episodes end terminated, some truncated
        e["trunc"][-1] = i % 2 == 1
        e["stream"] = 0 if streams is None else streams[i]
        offset += T
    for i, e in enumerate(eps):
        e["t0"] = 0 if t0 is None else t0[i]
        if e["t0"]:  # its stream's previous piece goes on here
            prev = max(k for k in range(i) if eps[k]["stream"] == e["stream"])
            assert eps[prev]["t0"] + len(eps[prev]["rew"]) == e["t0"]
            eps[prev]["term"][-1] = eps[prev]["trunc"][-1] = False
    store = ReplayStore(*spaces, capacity=capacity)
    for part in np.array_split(np.arange(len(eps)), chunks):
        store.extend([eps[i] for i in part])
    return store


def runs_of(store):
    """(E,) run id of each stored episode: consecutive episodes with one stream id, by a plain loop."""
    run, out = 0, []
    for k, s in enumerate(store.stream):
        run += k > 0 and s != store.stream[k - 1]
        out.append(run)
    return torch.tensor(out)


def check_against_columns(store, b):
    """Every real position of every field equals the store's columns at that step; padding is zero.
    Returns the stored row (B, K) and the stored episode (B, K) of every position (0 at padding)."""
    obs = torch.from_numpy(store.column("obs"))
    m = b.mask
    row = torch.where(m, b.obs[..., 0].long() - int(obs[0, 0]), 0)  # (B, K)
    for name in ("obs", "act", "rew", "rtg", "timestep", "term", "trunc"):
        got, want = getattr(b, name), torch.from_numpy(store.column(name))[row]
        assert torch.equal(got[m], want[m]), name
        assert (got[~m] == 0).all(), name
    ep = torch.from_numpy(store.column("episode"))[row]
    ep_start = torch.from_numpy(store.ep_start)
    last = row + 1 == ep_start[ep + 1]
    after = obs[(row + 1).clamp(max=len(obs) - 1)]  # (B, K, 3) the next stored step's observation
    want_next = torch.where(last[..., None], torch.from_numpy(store.final_obs)[ep], after)
    assert torch.equal(b.next_obs[m], want_next[m]) and (b.next_obs[~m] == 0).all()
    assert torch.equal(b.stream[m], torch.from_numpy(store.stream)[ep][m]) and (b.stream[~m] == 0).all()
    assert torch.equal(b.timestep[m], (row - ep_start[ep] + torch.from_numpy(store.t0)[ep])[m])
    assert torch.equal(b.first, (b.timestep == 0) & m)
    return row, ep


STORES = {  # lengths, streams, capacity, chunks[, t0]
    "plain": ([3, 8, 2, 11, 1, 6, 4, 5], [0, 0, 0, 1, 1, 2, 0, 0], None, 1),
    "evicted": ([3, 8, 2, 11, 1, 6, 4, 5, 9, 2, 7, 3], [0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 3, 3], 30, 5),
    "interleaved": ([3, 4, 2, 5, 3, 2, 4, 1, 3], [0, 1, 2, 0, 1, 2, 0, 1, 2], None, 3),  # an online store: envs
    # finish episodes in turn
    "pieces": ([4, 4, 3, 4, 2, 1, 4, 4, 5, 3], [0, 1, 0, 1, 0, 1, 0, 1, 0, 1], 30, 4,  # an online store today: each
               [0, 0, 4, 4, 0, 8, 2, 0, 6, 4]),  # env's steps at every collection, unfinished episodes as pieces
}
SAMPLERS = {
    "windows": lambda s, g: windows(s, 512, 6, g),
    "windows_to_drawn_ends": lambda s, g: windows(s, 512, 6, g, anchor="end"),
    "histories": lambda s, g: histories(s, 512, 9, g),
    "histories_from_episode_starts": lambda s, g: histories(s, 512, 9, g, episode_start=True),
    "sequences": lambda s, g: sequences(s, 512, 5, g),
    "context_query": lambda s, g: context_query(s, 512, 7, g),
}


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_no_sample_crosses_a_boundary_unmasked(spaces, kind, sampler):
    store = traced_store(spaces, *STORES[kind])
    if capacity := STORES[kind][2]:
        assert store.episodes_added > store.num_episodes and len(store) <= capacity  # some were evicted
    b = SAMPLERS[sampler](store, torch.Generator().manual_seed(0))
    row, ep = check_against_columns(store, b)
    runs = runs_of(store)  # (E,)
    run = runs[ep]  # (B, K)
    m = b.mask
    if sampler == "context_query":
        assert b.obs.shape[1] == 8 and m[:, -1].all()  # position C is the query, always real
        assert (b.stream[m] == b.stream[:, -1:].expand_as(m)[m]).all()  # one stream per row
        assert ((row[:, :-1] != row[:, -1:]) | ~m[:, :-1]).all()  # the query is never in its context
        return
    assert m[:, 0].all() and (m[:, 1:] <= m[:, :-1]).all()  # real steps form a prefix
    if sampler == "sequences":
        assert m.all()
        by_stream = stream_order(store)
        for w in range(len(row)):  # a slice of its stream's steps in the order stored, across episode ends
            steps = by_stream[int(store.stream[ep[w, 0]])]
            at = steps.index(int(row[w, 0]))
            assert row[w].tolist() == steps[at : at + 5]
        assert b.first[:, 1:].any()  # episode starts inside are marked
        return
    ep_end = torch.from_numpy(store.ep_start[1:])
    run_end = torch.tensor([max(ep_end[k] for k in range(len(ep_end)) if runs[k] == r) for r in runs])  # (E,)
    ep_first = torch.from_numpy(store.ep_start[:-1])
    for w in range(len(row)):
        real = row[w][m[w]]
        assert (real == real[0] + torch.arange(len(real))).all()  # consecutive steps
        unit, end = (ep, ep_end[ep]) if sampler.startswith("windows") else (run, run_end[ep])
        assert (unit[w][m[w]] == unit[w, 0]).all()  # inside the first step's episode (windows) or run
        if sampler == "windows_to_drawn_ends":  # a short window starts exactly at its episode's first step
            assert m[w].all() or real[0] == ep_first[ep[w, 0]]
        elif not m[w].all():  # padding starts exactly where the episode or run ends
            assert real[-1] + 1 == end[w, 0]
    if sampler.startswith("histories") and kind in ("plain", "evicted"):  # interleaved runs are single episodes
        assert b.first[:, 1:].any()  # episode starts inside histories are marked
    if sampler == "histories_from_episode_starts":  # a stored episode's first step: a piece's is t0
        assert torch.equal(b.timestep[:, 0], torch.from_numpy(store.t0)[ep[:, 0]])


def test_windows_at_known_positions(spaces):
    eps = make_episodes([4, 6])
    store = ReplayStore.from_episodes(eps, *spaces)
    b = windows_at(store, [2, 4, 9], 3)
    assert b.mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    np.testing.assert_array_equal(b.obs[1].numpy(), eps[1]["obs"][:3])
    np.testing.assert_array_equal(b.next_obs[0, 1].numpy(), eps[0]["obs"][4])  # the final observation
    assert b.first.tolist() == [[False, False, False], [True, False, False], [False, False, False]]
    assert b.term.tolist() == [[False, True, False], [False, False, False], [True, False, False]]
    with pytest.raises(DataError, match=r"window starts must be a list in \[0, 10\), got shape \(2,\), range \[3, 10\]"):
        windows_at(store, [3, 10], 2)


def test_histories_from_episode_starts_run_across_episodes_of_one_stream(spaces):
    store = traced_store(spaces, [3, 3, 3, 3], streams=[0, 0, 1, 1])
    b = histories(store, 64, 6, torch.Generator().manual_seed(1), episode_start=True)
    expect = {0: [True] * 6, 3: [True] * 3 + [False] * 3, 6: [True] * 6, 9: [True] * 3 + [False] * 3}
    seen = set()
    for w in range(64):
        s = int(b.obs[w, 0, 0])
        seen.add(s)
        assert b.mask[w].tolist() == expect[s]
        assert b.first[w].tolist() == [True, False, False, s in (0, 6), False, False]
    assert seen == {0, 3, 6, 9}  # every episode is a start


def test_draws_are_uniform(spaces):
    store = traced_store(spaces, [4, 2, 6], streams=[0, 0, 1])
    g = torch.Generator().manual_seed(0)
    starts = windows(store, 12000, 2, g).obs[:, 0, 0].long()
    assert torch.bincount(starts, minlength=12).min() > 800  # 12 steps, 1000 each expected
    # windows of 3 to drawn ends: each step ends 1000 windows, which start 2 steps before it or at its
    # episode's first step (episodes: steps 0-3, 4-5, 6-11)
    b = windows(store, 12000, 3, g, anchor="end")
    last = b.obs[..., 0].long().where(b.mask, -1).max(1).values  # (B,) the last real step
    assert torch.bincount(last, minlength=12).min() > 800
    first = torch.tensor([0, 0, 0, 1, 4, 4, 6, 6, 6, 7, 8, 9])  # by hand, for each last step
    assert torch.equal(b.obs[:, 0, 0].long(), first[last]) and torch.equal(b.mask.sum(1), last - first[last] + 1)
    with pytest.raises(ValueError, match="window anchor must be one of \\['start', 'end'\\], got 'middle'"):
        windows(store, 4, 3, g, anchor="middle")
    # sequences of 3: starts 0..3 in stream 0 (steps 0-5) and 6..9 in stream 1 (steps 6-11), never 4, 5, 10, 11
    counts = torch.bincount(sequences(store, 8000, 3, g).obs[:, 0, 0].long(), minlength=12)
    assert (counts[[4, 5, 10, 11]] == 0).all() and counts[[0, 1, 2, 3, 6, 7, 8, 9]].min() > 800
    with pytest.raises(DataError, match="sequences of 7 steps: no stream in the store has that many steps "
                                        "\\(the longest has 6 steps\\)"):
        sequences(store, 4, 7, g)


def test_context_comes_from_the_whole_stream(spaces):
    # stream 0 is split in two runs (episodes 0 and 2); a context may draw from both; stream 2 has one step
    store = traced_store(spaces, [5, 4, 5, 1], streams=[0, 1, 0, 2])
    b = context_query(store, 4000, 6, torch.Generator().manual_seed(0))
    q = b.obs[:, -1, 0].long()
    ctx = b.obs[:, :-1, 0].long()
    in0 = (q < 5) | ((q >= 9) & (q < 14))
    assert set(ctx[in0].unique().tolist()) == set(range(5)) | set(range(9, 14))
    assert set(ctx[(q >= 5) & (q < 9)].unique().tolist()) == set(range(5, 9))
    lone = q == 14  # the one-step stream: no context, the query alone
    assert lone.any() and not b.mask[lone, :-1].any() and b.mask[lone, -1].all()


def test_generator_makes_samples_repeatable(spaces):
    store = traced_store(spaces, [5, 7, 3], streams=[0, 0, 1])
    for sample in SAMPLERS.values():
        a, b = (sample(store, torch.Generator().manual_seed(7)) for _ in range(2))
        c = sample(store, torch.Generator().manual_seed(8))
        assert torch.equal(a.obs, b.obs) and not torch.equal(a.obs, c.obs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_samplers_are_graph_capturable_and_follow_appends_on_cuda(spaces):
    store = traced_store(spaces, [3, 8, 2, 11, 1, 6, 4, 5], [0, 0, 1, 1, 1, 2, 0, 0], capacity=30, chunks=3).to("cuda")
    for name, sample in SAMPLERS.items():
        sample(store, None)  # builds the device copy; warm-up outside the capture
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
        try:
            sample(store, None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = sample(store, None)
        draws = []
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            check_against_columns(store, out.to("cpu"))
            draws.append(out.obs[:, 0, 0].clone())
        assert not torch.equal(draws[0], draws[1]), name  # each replay draws anew
    # appends (with eviction) reach the device copy: only the new rows are copied
    more = make_episodes([7, 9], seed=5)
    for e, first in zip(more, (40, 47)):  # the traced store's steps went up to 39
        e["obs"][:, 0] = np.arange(first, first + len(e["obs"]))
    store.extend(more)
    for sample in SAMPLERS.values():
        check_against_columns(store, sample(store, torch.Generator().manual_seed(0)).to("cpu"))
