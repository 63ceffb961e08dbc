"""In-context RL: datasets (seqrl.data.icrl_collect), DPT and AD (seqrl.policies.icrl), in-context evaluation
(seqrl.runners.icrl) and the `seqrl collect` / `train` / `icrl` commands on them."""

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqrl.cli import app
from seqrl.data.icrl_collect import collect_icrl, make_env, ranges, in_ranges
from seqrl.data.minari_io import dataset_recipe, load_store, write_dataset
from seqrl.data.samplers import histories
from seqrl.errors import DataError
from seqrl.policies import TaskSpec, policy_class
from seqrl.policies.icrl import AD, DPT, ICRLConfig
from seqrl.presets import EnvPreset
from seqrl.runners.icrl import AgentLearner, GridOptimal, check_tasks, evaluate_icrl, fixed_context

runner = CliRunner()
BANDIT = "seqrl/GaussianBandit-v0"
ROOM = "seqrl/DarkRoom-v0"


def full_windows(store, k, n=2, seed=0):
    """n history windows of k steps with no padding (the samplers' Batch, rows picked)."""
    b = histories(store, 64, k, torch.Generator().manual_seed(seed), episode_start=True)
    rows = torch.nonzero(b.mask.all(1)).flatten()[:n]
    assert len(rows) == n
    return type(b)(**{f: getattr(b, f)[rows] for f in vars(b)})


def agent_on(cls, dataset, env_id, **cfg):
    store = load_store(dataset)
    torch.manual_seed(0)
    return cls(ICRLConfig(**({"embed_dim": 16, "n_layers": 2, "n_heads": 2, "context_len": 8} | cfg)),
               TaskSpec.from_store(store, EnvPreset(name="t", env_id=env_id))), store


@pytest.fixture
def bandit_dpt(minari_root):
    collect_icrl("gaussian-bandit", "dpt", {"tasks": 6, "env_kwargs": {"horizon": 20}})
    return "seqrl/gaussian-bandit/dpt-v0"


@pytest.fixture
def room_ad(minari_root):
    collect_icrl("darkroom", "ad-q", {"tasks": 3, "episodes": 3, "env_kwargs": {"horizon": 12}})
    return "seqrl/darkroom/ad-q-v0"


# ------------------------------------------------------------------------------------------- data
def test_dpt_data_round_trips_with_task_streams_and_labels(bandit_dpt, minari_root):
    store = load_store(bandit_dpt)
    assert store.num_episodes == 6 and len(store) == 6 * 20
    assert store.stream.tolist() == list(range(6))  # stream = task id
    env = make_env(BANDIT, {"horizon": 20})
    for m in store.episode_meta:
        env.reset(options={"task": m["task"]})
        assert m["optimal"] == [env.optimal_action()]
    rec = dataset_recipe(bandit_dpt)
    assert rec["icrl"] == "dpt" and rec["train_tasks"] == [[0, 6]] and rec["env_kwargs"] == {"horizon": 20}
    # the same recipe reuses the dataset; another is refused
    assert collect_icrl("gaussian-bandit", "dpt", {"tasks": 6, "env_kwargs": {"horizon": 20}}).is_dir()
    with pytest.raises(DataError, match="another recipe"):
        collect_icrl("gaussian-bandit", "dpt", {"tasks": 7, "env_kwargs": {"horizon": 20}})


def test_ad_histories_run_across_episodes_of_one_task(room_ad):
    store = load_store(room_ad)
    assert store.num_episodes == 9 and store.stream.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    b = histories(store, 16, 30, torch.Generator().manual_seed(0), episode_start=True)
    m = b.mask
    assert (m.cummin(1).values == m).all()  # real steps, then padding where the task's history ends
    assert ((b.stream == b.stream[:, :1]) | ~m).all()  # one task per window
    assert (m.sum(1) == 30).any() and (b.first[:, 12] & m[:, 12]).any()  # across episode ends (12 steps each)


def test_dpt_labels_are_the_optimal_action_at_each_state(minari_root):
    collect_icrl("darkroom", "dpt", {"tasks": 4, "episodes": 2, "env_kwargs": {"horizon": 15}})
    agent, store = agent_on(DPT, "seqrl/darkroom/dpt-v0", ROOM)
    b = agent.sample(store, 8, torch.Generator().manual_seed(1))
    env = make_env(ROOM, {"horizon": 15})
    for i in range(8):
        env.reset(options={"task": int(b.batch.stream[i, 0])})
        want = [env.optimal_action(o) for o in b.batch.obs[i].numpy()]
        assert b.label[i].tolist() == want
    assert (b.batch.stream == b.batch.stream[:, :1]).all()  # context and query from one task


def test_dpt_grid_contexts_visit_every_cell_about_equally(minari_root):
    """DPT's random transitions: walks from a uniformly random cell keep every step's state uniform (the random
    walk with wall-stays is doubly stochastic); walks from the start cell (dpt_start = "start") pile up near it."""
    from seqrl.data.minari_io import read_episodes

    counts = {}
    for start in ("uniform", "start"):
        collect_icrl("darkroom", "dpt", {"tasks": 4, "episodes": 50, "dpt_start": start}, rebuild=True)
        eps, _, _ = read_episodes("seqrl/darkroom/dpt-v0")
        obs = [np.asarray(e["obs"]) for e in eps]
        assert all(np.abs(np.diff(o, axis=0)).sum(1).max() <= 1 for o in obs)  # true walks: one move per step
        states = np.concatenate([o[:-1] for o in obs])
        counts[start] = np.bincount(states[:, 0] * 10 + states[:, 1], minlength=100) / len(states) * 100
    assert 0.4 < counts["uniform"].min() and counts["uniform"].max() < 1.8  # 20,000 states over 100 cells
    assert counts["start"].max() > 5 and counts["start"].min() < 0.2


def test_ranges():
    assert ranges([5, 1, 2, 3, 9]) == [[1, 4], [5, 6], [9, 10]]
    assert in_ranges([0, 1, 4, 9], [[1, 4], [9, 10]]).tolist() == [False, True, False, True]


# ------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("backbone,tokens,rope", [("transformer", "s a r", False), ("transformer", "s a r", True),
                                                  ("mamba", "s a r", False), ("transformer", "s ar", False),
                                                  ("transformer", "s ar", True), ("mamba", "s ar", False),
                                                  ("gtrxl", "s ar", False), ("gtrxl", "s a r", False)])
def test_acting_step_by_step_equals_the_whole_context(room_ad, backbone, tokens, rope):
    """act/observe one token at a time (cache or recurrent state) = predict over the whole history, float64
    backbone and head; and `encode` of a context then a query = the prediction at that position."""
    agent, store = agent_on(AD, room_ad, ROOM, backbone=backbone, context_len=20, tokens=tokens, rope=rope)
    agent.backbone.double(), agent.head.double()
    agent.eval()
    b = full_windows(store, 20)
    with torch.no_grad():
        ref = agent.predict(b).double()  # (2, 20, 5)
        st = agent.initial_state(2, "cpu")
        for t in range(20):
            lg, st = agent.logits(b.obs[:, t], st)
            torch.testing.assert_close(lg, ref[:, t], atol=1e-6, rtol=0)
            st = agent.feed_action(b.act[:, t], st)
            st = agent.observe(st, b.rew[:, t], b.first[:, t])
        ctx = agent.encode(b.obs[:, :11], b.act[:, :11], b.rew[:, :11])
        lg, _ = agent.logits(b.obs[:, 11], ctx)
        torch.testing.assert_close(lg, ref[:, 11], atol=1e-6, rtol=0)
    assert not torch.allclose(ref[:, 3], ref[:, 15])  # the context changes the prediction


@pytest.mark.parametrize("tokens,rope", [("s a r", False), ("s ar", False), ("s a r", True)])
def test_transformer_acts_on_a_window_of_the_last_k_transitions(room_ad, tokens, rope):
    """Past K transitions each token attends to its last 3K-2 tokens, cached (sliding-window attention): with one
    layer that is the prediction at the end of a K-step window exactly (deeper layers see further back, through
    the keys of earlier tokens, as in DT). With rotary positions too: a window read from scratch starts at
    position 0, the cache is far along, and only distances count."""
    agent, store = agent_on(AD, room_ad, ROOM, context_len=6, n_layers=1, tokens=tokens, rope=rope)
    agent.backbone.double(), agent.head.double()
    agent.eval()
    b = full_windows(store, 20, seed=3)
    with torch.no_grad():
        st = agent.initial_state(2, "cpu")
        for t in range(20):
            lg, st = agent.logits(b.obs[:, t], st)
            if t >= 6:  # the window: transitions t-5 .. t-1 and s_t, i.e. the last position of a 6-step window
                sub = type(b)(**{k: (v[:, t - 5: t + 1] if isinstance(v, torch.Tensor) else v)
                                 for k, v in vars(b).items()})
                torch.testing.assert_close(lg, agent.predict(sub).double()[:, -1], atol=1e-6, rtol=0)
            st = agent.observe(agent.feed_action(b.act[:, t], st), b.rew[:, t], b.first[:, t])


# ------------------------------------------------------------------------------------------ bad input
def test_dataset_without_task_ids_is_refused(minari_root):
    env = make_env(BANDIT, {"horizon": 10})
    env.reset(seed=0)
    eps = [{"obs": np.zeros(11, np.int64), "act": np.arange(10) % 5, "rew": np.zeros(10, np.float32),
            "term": np.zeros(10, bool), "trunc": np.r_[np.zeros(9, bool), True]} for _ in range(3)]
    write_dataset("seqrl/gaussian-bandit/plain-v0", eps, BANDIT, 0.0, 1.0, "x", "no task ids")
    with pytest.raises(DataError, match="records no task ids"):
        agent_on(DPT, "seqrl/gaussian-bandit/plain-v0", BANDIT)
    store = load_store("seqrl/gaussian-bandit/plain-v0")  # a store made in Python: checked when sampled
    ad = AD(ICRLConfig(embed_dim=8, n_layers=1, n_heads=1, context_len=4),
            TaskSpec(store.observation_space, store.action_space, *store.obs_stats(), EnvPreset(env_id=BANDIT)))
    with pytest.raises(DataError, match="without a task id"):
        ad.sample(store, 2)
    res = runner.invoke(app, ["train", "--agent", "ad", "--dataset", "seqrl/gaussian-bandit/plain-v0", "--env", BANDIT])
    assert res.exit_code == 2 and "records no task ids" in " ".join(res.output.split())


def test_training_tasks_mamba_context_and_arms_are_checked(bandit_dpt):
    agent, _ = agent_on(DPT, bandit_dpt, BANDIT)
    with pytest.raises(DataError, match="were training tasks"):
        check_tasks(agent, [3, 500], False, "dpt")
    with pytest.warns(UserWarning, match="NOT held-out"):
        check_tasks(agent, [3, 500], True, "dpt")
    check_tasks(agent, [100_000, 100_001], False, "dpt")  # the test split: fine
    mamba, _ = agent_on(DPT, bandit_dpt, BANDIT, backbone="mamba")
    with pytest.raises(DataError, match="trained on 8"):
        evaluate_icrl({"m": mamba}, "gaussian-bandit", {"horizon": 20}, [100_000], [0], 1, with_baselines=False)
    with pytest.raises(DataError, match="action"):  # a 3-arm bandit for a 5-arm model: arms out of range
        evaluate_icrl({"d": agent}, "gaussian-bandit", {"horizon": 20, "arms": 3}, [100_000], [0], 1)


def test_agent_learner_keeps_rows_that_did_not_step(bandit_dpt):
    agent, _ = agent_on(AD, bandit_dpt, BANDIT)
    agent.eval()
    lr = AgentLearner(agent, 2, "online")
    rng = np.random.default_rng(0)
    obs = np.zeros(2, np.int64)
    lr.act(obs, rng)
    before = lr._prev.mem
    lr.update(obs, np.array([1, 2]), np.array([0.5, 0.5]), obs, np.zeros(2, bool), np.array([True, False]))
    for old, new in zip(before.k, lr.state.mem.k):  # row 1 did not step: its cache is what it was
        torch.testing.assert_close(new[1], old[1])
        assert not torch.equal(new[0], old[0])


def test_offline_context_takes_ads_episode_not_dpts(bandit_dpt):
    """Offline modes: AD's current episode joins the fixed context (its next query sees the pull it just made)
    and each episode starts from the context again; DPT queries against the context alone."""
    ctx = {"obs": np.zeros((2, 4), np.int64), "act": np.array([[0, 1, 2, 3], [4, 3, 2, 1]]),
           "rew": np.full((2, 4), 0.5, np.float32)}
    rng = np.random.default_rng(0)
    obs = np.zeros(2, np.int64)
    for cls, joins in ((AD, True), (DPT, False)):
        agent, _ = agent_on(cls, bandit_dpt, BANDIT)
        agent.eval()
        lr = AgentLearner(agent, 2, "offline-expert", ctx)
        first = agent.logits(lr._t(obs), lr.state)[0]
        lr.reset_episode()
        lr.act(obs, rng)
        lr.update(obs, np.array([1, 1]), np.array([3.0, -3.0]), obs, np.zeros(2, bool))
        after = agent.logits(lr._t(obs), lr.state)[0]
        assert torch.equal(after, first) is not joins  # the pull and its reward are in AD's context only
        lr.reset_episode()  # a new episode: the fixed context alone again
        torch.testing.assert_close(agent.logits(lr._t(obs), lr.state)[0], first)


def test_fixed_context_goes_on_with_the_next_episode():
    """Key-to-Door's expert ends each episode at the door after a few steps: the context holds T = 50
    transitions of consecutive expert episodes (key then door, again and again), none of padding."""
    import functools

    mk = functools.partial(make_env, "seqrl/KeyToDoor-v0", {})
    tasks = np.array([0, 7, 123])
    ctx = fixed_context(mk, tasks, GridOptimal.from_envs, seed=5, T=50)
    assert ctx["obs"].shape == (3, 50, 2) and ctx["act"].shape == ctx["rew"].shape == (3, 50)
    centre = np.array([4, 4])
    for i in range(3):
        starts = np.flatnonzero((ctx["obs"][i] == centre).all(1))
        assert len(starts) >= 3  # several episodes, each from the centre (the default start)
        per_episode = np.split(ctx["rew"][i], starts[1:])
        for r in per_episode[:-1]:  # every complete episode: the key, then the door, then its end
            assert r.sum() == 2.0 and r[-1] == 1.0


# ------------------------------------------------------------------------------------------ end to end
def test_collect_train_icrl_through_the_cli(minari_root, tmp_path):
    res = runner.invoke(app, ["collect", "--env", "gaussian-bandit", "--quality", "dpt", "--set", "tasks=8",
                              "--set", "env_kwargs.horizon=16", "--set", "env_kwargs.noise=0.3"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "dpt"
    res = runner.invoke(app, ["train", "--agent", "dpt", "--dataset", "seqrl/gaussian-bandit/dpt-v0", "--env", BANDIT,
                              "--run-dir", str(run), "--set", "trainer.steps=3", "--set", "policy.embed_dim=16",
                              "--set", "policy.n_layers=1", "--set", "policy.context_len=8",
                              "--set", "source.batch_size=4"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "eval"
    res = runner.invoke(app, ["icrl", str(run / "checkpoint.pt"), "--tasks", "2", "--seeds", "2", "--mode", "online",
                              "--mode", "offline", "--mode", "offline-expert", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["env_kwargs"] == {"horizon": 16, "noise": 0.3} and data["n_tasks"] == 2 and data["tasks"][0] >= 100_000
    methods = data["methods"]
    assert {"dpt-transformer (online)", "dpt-transformer (offline)", "dpt-transformer (offline-expert)", "ucb",
            "thompson", "optimal"} <= set(methods)
    assert methods["optimal"]["cum_regret_mean"][-1] == 0.0 and methods["random"]["cum_regret_mean"][-1] > 0
    assert len(methods["ucb"]["cum_regret_mean"]) == 16 and methods["ucb"]["trials"] == 4
    assert "regret@16" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 1000
    # out of distribution: the Gaussian-pretrained model on Bernoulli arms (the same means per task id)
    res = runner.invoke(app, ["icrl", str(run / "checkpoint.pt"), "--tasks", "2", "--seeds", "1",
                              "--family", "bernoulli-bandit", "--out", str(tmp_path / "ood")])
    assert res.exit_code == 0, res.output
    ood = json.loads((tmp_path / "ood" / "results.json").read_text())
    assert (ood["family"], ood["trained_on"]) == ("bernoulli-bandit", "gaussian-bandit")
    assert ood["env_kwargs"] == {"horizon": 16} and "takes no ['noise']" in " ".join(res.output.split())
    assert ood["tasks"] == data["tasks"] and "thompson" in ood["methods"]
    assert "pretrained on gaussian-bandit: out of distribution" in (tmp_path / "ood" / "results.md").read_text()
    res = runner.invoke(app, ["icrl", str(run / "checkpoint.pt"), "--family", "bernouli-bandit", "--out", str(out)])
    assert res.exit_code == 2 and "--family 'bernouli-bandit': one of" in " ".join(res.output.split())
    # the same tasks were trained on when the split moves: refused, in one line
    res = runner.invoke(app, ["icrl", str(run / "checkpoint.pt"), "--tasks", "2", "--set", "train_tasks=1",
                              "--out", str(out)])
    assert res.exit_code == 2 and "were training tasks" in " ".join(res.output.split())


def test_training_makes_the_env_as_the_data_was_recorded(minari_root, tmp_path):
    """AD's 9x9 Dark Room has other spaces than the registered default (10x10): `seqrl train` takes the env's
    kwargs from the dataset's recipe, and --set env.env_kwargs.* still wins."""
    from seqrl.presets import load_agent
    from seqrl.runners.sources import build_source

    kw = {"size": 9, "horizon": 20, "start": "centre"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari records the default's spaces
        collect_icrl("darkroom", "ad-noisy", {"tasks": 3, "episodes": 2, "env_kwargs": kw})
    preset = load_agent("ad", {})
    _, spec, _ = build_source(preset, "seqrl/darkroom/ad-noisy-v0", ROOM, {})
    assert spec.env.env_kwargs == kw and list(spec.observation_space.nvec) == [9, 9]
    _, spec, _ = build_source(preset, "seqrl/darkroom/ad-noisy-v0", ROOM, {"env_kwargs": {"horizon": 30}})
    assert spec.env.env_kwargs == kw | {"horizon": 30}
    with pytest.raises(DataError, match=r"MultiDiscrete\(\[9 9\]\) does not match"):
        build_source(preset, "seqrl/darkroom/ad-noisy-v0", ROOM, {"env_kwargs": {"size": 10}})
    res = runner.invoke(app, ["train", "--agent", "ad", "--dataset", "seqrl/darkroom/ad-noisy-v0", "--env", ROOM,
                              "--run-dir", str(tmp_path / "ad"), "--set", "trainer.steps=2",
                              "--set", "policy.embed_dim=16", "--set", "policy.n_layers=1",
                              "--set", "policy.context_len=8", "--set", "source.batch_size=4"])
    assert res.exit_code == 0, res.output


def test_registry_and_presets():
    from seqrl.presets import load_agent

    assert policy_class("dpt") is DPT and policy_class("ad") is AD
    for name in ("dpt", "ad", "dpt_mamba", "ad_mamba"):
        p = load_agent(name)
        assert p.trainer.eval_episodes == 0 and p.policy.backbone == ("mamba" if "mamba" in name else "transformer")
