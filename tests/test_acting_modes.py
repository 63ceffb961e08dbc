"""DT and DM acting modes: "stream" (cache or recurrent state over the whole episode) and "window" (the
last K steps re-encoded from an empty state at every env step, as a training window is encoded).

Dimension letters: n envs, T env steps, K context steps, A action dim.
"""

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_episodes
from seqrl.checkpoint import load_checkpoint, policy_from_checkpoint, save_checkpoint
from seqrl.cli import app
from seqrl.data.store import Batch, ReplayStore
from seqrl.errors import PresetError
from seqrl.policies import TaskSpec
from seqrl.policies.dm import DecisionMamba, DMConfig
from seqrl.policies.dt import DecisionTransformer, DTConfig, TokenWindow
from seqrl.presets import agent_from_dict, load_agent, load_env, parse_overrides

K = 4
TARGET = 5.0
CONFIGS = {
    "dt": (DecisionTransformer, DTConfig(embed_dim=32, n_layers=2, n_heads=2, context_len=K, dropout=0.0)),
    "dm": (DecisionMamba, DMConfig(embed_dim=16, n_layers=2, d_state=4, expand=1, context_len=K, dropout=0.0)),
}
# per env, the steps after which its episode ends: env 0 runs on, env 1 ends short episodes, env 2 one
# longer than K, env 3 an episode of a single step; T = 14 steps in all
DONE_AFTER = [[], [1, 7], [5], [0, 12]]
T = 14


def make_agent(name, spaces, **changes):
    cls, cfg = CONFIGS[name]
    store = ReplayStore.from_episodes(make_episodes([30] * 3), *spaces)
    env = dataclasses.replace(load_env("pendulum"), target_returns=(TARGET,))
    torch.manual_seed(0)
    agent = cls(dataclasses.replace(cfg, **changes), TaskSpec.from_store(store, env)).eval()
    with torch.no_grad():  # an initialised network is near its linear regime: what a token sees barely matters
        for p in agent.parameters():
            p.add_(0.15 * torch.randn_like(p))
    return agent


def inputs(n=len(DONE_AFTER), seed=1):
    """Observations (n, T, 3), rewards (n, T), done (n, T): what the envs hand the agent."""
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(n, T, dtype=torch.bool)
    for i, ends in enumerate(DONE_AFTER[:n]):
        done[i, ends] = True
    return torch.randn(n, T, 3, generator=g), torch.randn(n, T, generator=g), done


def act_through(agent, obs, rew, done):
    """The agent's own acting loop (as evaluation runs it) -> actions (n, T, A)."""
    state, actions = agent.initial_state(obs.shape[0], "cpu"), []
    for t in range(obs.shape[1]):
        a, state = agent.act(obs[:, t], state)
        actions.append(a)
        state = agent.observe(state, rew[:, t], done[:, t])
    return torch.stack(actions, 1)


def episode_steps(done):
    """(n, T) long: each step's timestep inside its episode, from the done flags."""
    t = torch.zeros(done.shape, dtype=torch.long)
    for j in range(1, done.shape[1]):
        t[:, j] = torch.where(done[:, j - 1], 0, t[:, j - 1] + 1)
    return t


def window_reference(agent, obs, rew, done, actions):
    """The slow obvious reference: for every env and step, build the window of the episode's last K steps
    (at most) from the raw trajectory, return-to-go summed in float64, and run the training forward
    (`agent.predict`) on it from scratch; the action at its last state token. -> (n, T, A)"""
    n = obs.shape[0]
    ts = episode_steps(done)
    out = torch.zeros_like(actions)
    for i in range(n):
        for t in range(T):
            start = t - int(ts[i, t])  # the first step of t's episode
            lo = max(start, t - K + 1)
            spent = np.cumsum(np.r_[0.0, rew[i, start:t].double().numpy()])  # reward collected before each step
            rtg = torch.tensor(TARGET - spent[lo - start:], dtype=torch.float32)[None]  # (1, L)
            L = t + 1 - lo
            act = actions[i, lo:t + 1].clone()[None]
            act[:, -1] = 0.0  # the current step's action is not known yet: nothing may read it
            ones = torch.ones(1, L, dtype=torch.bool)
            batch = Batch(obs=obs[i, lo:t + 1][None], next_obs=obs[i, lo:t + 1][None], act=act,
                          rew=rew[i, lo:t + 1][None], rtg=rtg, timestep=ts[i, lo:t + 1][None], term=~ones,
                          trunc=~ones, first=~ones, mask=ones, stream=torch.zeros(1, L, dtype=torch.long))
            with torch.no_grad():
                out[i, t] = agent.head.to_env(agent.predict(batch))[0, -1]
    return out


# ------------------------------------------------------------------------------- window acting
@pytest.mark.parametrize("name", ["dt", "dm"])
def test_window_acting_equals_a_fresh_forward_over_the_last_k_steps(name, spaces):
    """Every action of window acting, in 4 envs whose episodes end at different steps, is the one the
    training forward predicts on that step's last-K-step window rebuilt from the raw trajectory."""
    agent = make_agent(name, spaces, act_mode="window")
    obs, rew, done = inputs()
    actions = act_through(agent, obs, rew, done)
    want = window_reference(agent, obs, rew, done, actions)
    torch.testing.assert_close(actions, want, atol=1e-5, rtol=1e-5)
    # the reference is not trivially met: the same actions read one step too early or late do not match
    assert (actions[:, 1:] - want[:, :-1]).abs().max() > 1e-3


def test_token_window_bookkeeping():
    """Slots fill oldest first, a full window drops its oldest step, a done empties it."""
    n, d = 2, 1
    w = TokenWindow.empty(n, 3, d, torch.zeros(n))
    for step in range(5):
        x = w.with_current(torch.full((n, d), 10.0 * step), torch.full((n, d), 10.0 * step + 1))
        h = x.flatten(1, 2)  # (n, 9, d): the "backbone" output is its input
        assert w.read(h)[:, 0].tolist() == [10.0 * step + 1] * n
        w = w.advance(x, torch.full((n, d), 10.0 * step + 2))
        w = w.observe(torch.ones(n), torch.tensor([False, step == 3]))
    # env 0: steps 3 and 4 held (R tokens 30, 40); env 1: its episode restarted after step 3, one step held
    assert w.held.tolist() == [2, 1] and w.tokens[0, :2, 0, 0].tolist() == [30.0, 40.0]
    assert w.tokens[1, 0, :, 0].tolist() == [40.0, 41.0, 42.0]
    assert w.t.tolist() == [5, 1] and w.rtg.tolist() == [-5.0, -1.0]


# ------------------------------------------------------------------------- window against stream
def in_first_k(done):
    return episode_steps(done) < K  # (n, T): steps where the episode so far fits one window


@pytest.mark.parametrize("name", ["dt", "dm"])
def test_window_and_stream_agree_in_the_first_k_steps_of_every_episode(name, spaces):
    """Both modes see the whole episode so far while it is at most K steps long (DT by the attention
    span 3K-1, DM because the backbone is causal and the window starts at the episode's start). Past
    that they differ: stream keeps a longer memory than a training window."""
    obs, rew, done = inputs()
    stream = act_through(make_agent(name, spaces), obs, rew, done)
    window = act_through(make_agent(name, spaces, act_mode="window"), obs, rew, done)
    first = in_first_k(done)
    torch.testing.assert_close(window[first], stream[first], atol=1e-5, rtol=1e-5)
    assert (window[~first] - stream[~first]).abs().max() > 1e-4


def test_one_layer_dt_window_equals_stream_at_every_step(spaces):
    """With one layer a state token attends to the 3K-1 tokens before it, and their keys and values
    are their embeddings alone: stream acting is window acting at every step of an episode."""
    obs, rew, done = inputs()
    stream = act_through(make_agent("dt", spaces, n_layers=1), obs, rew, done)
    window = act_through(make_agent("dt", spaces, n_layers=1, act_mode="window"), obs, rew, done)
    assert (~in_first_k(done)).any()
    torch.testing.assert_close(window, stream, atol=1e-5, rtol=1e-5)


def test_one_layer_dm_stream_remembers_past_the_window(spaces):
    """DM's recurrent state is not bounded by K: even one layer differs from window acting past step K-1."""
    obs, rew, done = inputs()
    stream = act_through(make_agent("dm", spaces, n_layers=1), obs, rew, done)
    window = act_through(make_agent("dm", spaces, n_layers=1, act_mode="window"), obs, rew, done)
    first = in_first_k(done)
    torch.testing.assert_close(window[first], stream[first], atol=1e-5, rtol=1e-5)
    assert (window[~first] - stream[~first]).abs().max() > 1e-4


# ------------------------------------------------------------------------------ config and CLI
@pytest.mark.parametrize("agent", ["dt_small", "dm_small"])
def test_act_mode_is_checked_and_defaults_to_stream(agent):
    preset = load_agent(agent)
    assert preset.policy.act_mode == "stream"
    assert load_agent(agent, parse_overrides(["policy.act_mode=window"])).policy.act_mode == "window"
    with pytest.raises(PresetError, match="act_mode"):
        load_agent(agent, parse_overrides(["policy.act_mode=sliding"]))
    with pytest.raises(ValueError, match="act_mode"):
        dataclasses.replace(preset.policy, act_mode="sliding")
    old = preset.to_dict()
    del old["policy"]["act_mode"]  # a preset saved before acting modes existed
    assert agent_from_dict(old).policy.act_mode == "stream"


def test_eval_act_option_on_a_checkpoint_from_before_acting_modes(dataset, tmp_path):
    """`seqrl eval --act` evaluates one checkpoint either way; a checkpoint whose preset has no act_mode
    (saved before acting modes) loads and streams; --act is refused for an agent with one mode."""
    runner = CliRunner()
    tiny = ["--set", "trainer.steps=3", "--set", "trainer.eval_episodes=0", "--set", "source.batch_size=4",
            "--set", "env.max_episode_steps=50"]
    dt_size = ["--set", "policy.embed_dim=16", "--set", "policy.n_layers=2", "--set", "policy.context_len=3"]
    for agent, size in (("dt", dt_size), ("bc", ["--set", "policy.hidden_dim=16"])):
        res = runner.invoke(app, ["train", "--agent", agent, "--dataset", dataset, "--run-dir", str(tmp_path / agent),
                                  *tiny, *size])
        assert res.exit_code == 0, res.output
    path = tmp_path / "dt" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    del ckpt["preset"]["policy"]["act_mode"]
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != "format"})
    policy, _, _ = policy_from_checkpoint(path)
    assert policy.config.act_mode == "stream"
    for mode in ("stream", "window"):
        res = runner.invoke(app, ["eval", str(path), "--episodes", "2", "--act", mode])
        assert res.exit_code == 0, res.output
        assert f"acting mode {mode}" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["eval", str(path), "--episodes", "2"])
    assert res.exit_code == 0 and "acting mode stream" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["eval", str(path), "--act", "sliding"])
    assert res.exit_code == 2 and "act_mode must be one of" in res.output, res.output
    res = runner.invoke(app, ["eval", str(tmp_path / "bc" / "checkpoint.pt"), "--act", "window"])
    assert res.exit_code == 2 and "has one acting mode" in res.output, res.output
