"""The memory tasks beyond the T-maze (seqrl.envs.memory: Count, Autoencode, RepeatPrevious at several k):
spaces and episode lengths as documented, a scripted optimal policy at the maximum return, memoryless and
random policies clearly below it, seeding, bad arguments. Then Tuple and MultiDiscrete observations through
the online agents (PPO with a GTrXL and an LSTM memory, the env source), on two tiny envs defined here."""

from math import comb

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import seqrl  # noqa: F401  importing seqrl registers the seqrl/... ids
from seqrl.envs import Autoencode, Count, RepeatPrevious
from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent, load_env, parse_overrides
from seqrl.runners.evaluate import RandomPolicy, evaluate
from seqrl.runners.sources import EnvSource
from seqrl.runners.trainer import Trainer


def preset(name, **kwargs):
    """envs/NAME.toml with env_kwargs overridden: the id, the limits and the kwargs the CLI would use."""
    return load_env(name, {"env_kwargs": kwargs} if kwargs else {})


class PerEnv:
    """seqrl's acting contract (`initial_state`, `act`, `observe`, batched) over a plain Python policy run
    once per env: `policy(obs row as numpy, memory dict) -> action`, the memory cleared at episode ends."""

    def __init__(self, policy):
        self.policy = policy

    def initial_state(self, n, device):
        return [{} for _ in range(n)]

    def act(self, obs, memory):
        return torch.tensor([self.policy(o, m) for o, m in zip(obs.numpy(), memory)]), memory

    def observe(self, memory, reward, done):
        return [{} if d else m for m, d in zip(memory, done.tolist())]


# ----------------------------------------------------------------------------------- scripted policies
def count_oracle(n):
    """Counts the symbols shown (the first n features), answers the count of the one asked (the last n)."""
    def policy(obs, mem):
        counts = mem.setdefault("counts", np.zeros(n, np.int64))
        counts += obs[:n].astype(np.int64)
        return int(counts[obs[n:].argmax()]) if obs[n:].any() else 0
    return policy


def count_memoryless(k, n):
    """The best any policy without memory can do: the most likely count of Binomial(k, 1/n)."""
    mode = int(np.argmax([comb(k, c) * (n - 1) ** (k - c) for c in range(k + 1)]))
    return lambda obs, mem: mode


def count_memoryless_return(k, n):
    p = max(comb(k, c) * (1 / n) ** c * (1 - 1 / n) ** (k - c) for c in range(k + 1))
    return 2 * p - 1


def autoencode_oracle(n):
    """Writes down each symbol shown (the first n features), reads them back in order on the recall flag."""
    def policy(obs, mem):
        seen = mem.setdefault("seen", [])
        if obs[n] == 1.0:
            mem["i"] = mem.get("i", -1) + 1
            return seen[mem["i"]]
        seen.append(int(obs[:n].argmax()))
        return 0
    return policy


def repeat_oracle(k):
    """Answers the symbol shown k steps before the current one."""
    def policy(obs, mem):
        seen = mem.setdefault("seen", [])
        seen.append(int(obs.argmax()))
        return seen[-1 - k] if len(seen) > k else 0
    return policy


# ---------------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("env", [Count(1, n_symbols=2, queries=1), Count(), Count(5, 4, 7), Autoencode(1, 2),
                                 Autoencode(), Autoencode(9, 3)])
def test_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("k,n,queries", [(1, 2, 1), (8, 3, 3), (20, 5, 4)])
def test_count_spaces_lengths_and_rewards(k, n, queries):
    env = gym.make("seqrl/Count-v0", k=k, n_symbols=n, queries=queries)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (2 * n,), np.float32)
    assert env.action_space == gym.spaces.Discrete(k + 1)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        shown, steps, total = np.zeros(n, np.int64), 0, 0.0
        while True:
            assert obs.sum() == 1.0 and obs in env.observation_space
            showing = steps < k
            assert obs[:n].any() == showing and obs[n:].any() == (not showing)  # the phases as documented
            shown += obs[:n].astype(np.int64)
            wrong = seed % 2 == 1 and steps == k  # odd seeds answer the first query wrong
            answer = (int(shown[obs[n:].argmax()]) + wrong) % (k + 1) if not showing else 0
            obs, rew, term, trunc, info = env.step(answer)
            steps += 1
            total += rew
            assert not trunc and rew == (0.0 if showing else pytest.approx((-1.0 if wrong else 1.0) / queries))
            if term:
                break
            assert info == {}
        assert steps == k + queries and not obs.any()
        assert total == pytest.approx(1.0 - 2.0 / queries * (seed % 2))
        assert info["success"] == (seed % 2 == 0) and info["accuracy"] == pytest.approx(1 - (seed % 2) / queries)


@pytest.mark.parametrize("k,n", [(1, 2), (4, 4), (12, 3)])
def test_autoencode_spaces_lengths_and_rewards(k, n):
    env = gym.make("seqrl/Autoencode-v0", k=k, n_symbols=n)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (n + 1,), np.float32)
    assert env.action_space == gym.spaces.Discrete(n)
    obs, _ = env.reset(seed=3)
    shown = []
    for t in range(k):  # the symbols, one per step, and no recall flag; actions are not scored
        assert obs.sum() == 1.0 and obs[n] == 0.0
        shown.append(int(obs.argmax()))
        obs, rew, term, _, _ = env.step(n - 1)
        assert rew == 0.0 and not term
    for i in range(k):  # the recall flag alone; the last symbol answered wrong
        assert obs.sum() == 1.0 and obs[n] == 1.0
        right = i < k - 1
        obs, rew, term, trunc, info = env.step(shown[i] if right else (shown[i] + 1) % n)
        assert rew == pytest.approx((1.0 if right else -1.0) / k) and term == (i == k - 1) and not trunc
    assert not obs.any() and not info["success"] and info["accuracy"] == pytest.approx((k - 1) / k)


@pytest.mark.parametrize("k", [1, 2, 8, 16])
def test_repeat_previous_memory_knob(k):
    """k sets how far back the answer lies: the k-step oracle is perfect, one that looks k+1 back is at chance."""
    env = preset("repeat_previous", k=k)
    assert gym.make(env.env_id, **env.env_kwargs).unwrapped.k == k
    best = evaluate(PerEnv(repeat_oracle(k)), env, 20, seed=0)
    assert (best.returns == 1.0).all() and (best.lengths == k + 16).all() and best.summary()["success_rate"] == 1.0
    off = evaluate(PerEnv(repeat_oracle(k + 1)), env, 100, seed=0).summary()["return_mean"]
    assert 0.15 < off < 0.35  # chance: 1/4 of the answers right


# --------------------------------------------------------------------------- optimal against memoryless
@pytest.mark.parametrize("k,n", [(8, 3), (4, 2), (16, 3)])
def test_count_optimal_memoryless_and_random(k, n):
    env = preset("count", k=k, n_symbols=n)
    best = evaluate(PerEnv(count_oracle(n)), env, 50, seed=0)
    assert np.allclose(best.returns, 1.0) and (best.lengths == k + 3).all()
    assert best.summary()["success_rate"] == 1.0
    blind = evaluate(PerEnv(count_memoryless(k, n)), env, 400, seed=0).summary()["return_mean"]
    expected = count_memoryless_return(k, n)  # k=8, n=3: -0.45
    assert expected < 0.0 and blind == pytest.approx(expected, abs=0.1)
    rand = evaluate(RandomPolicy(gym.spaces.Discrete(k + 1)), env, 400, seed=0).summary()["return_mean"]
    assert rand == pytest.approx(2 / (k + 1) - 1, abs=0.1)


@pytest.mark.parametrize("k,n", [(4, 4), (1, 2), (10, 3)])
def test_autoencode_optimal_memoryless_and_random(k, n):
    env = preset("autoencode", k=k, n_symbols=n)
    best = evaluate(PerEnv(autoencode_oracle(n)), env, 50, seed=0)
    assert np.allclose(best.returns, 1.0) and (best.lengths == 2 * k).all()
    assert best.summary()["success_rate"] == 1.0
    chance = 2 / n - 1
    blind = evaluate(PerEnv(lambda obs, mem: 0), env, 400, seed=0).summary()["return_mean"]
    rand = evaluate(RandomPolicy(gym.spaces.Discrete(n)), env, 400, seed=0).summary()["return_mean"]
    assert blind == pytest.approx(chance, abs=0.12) and rand == pytest.approx(chance, abs=0.12)


def test_presets_defaults_match_their_reference_scores():
    """envs/count.toml and envs/autoencode.toml: ref_min_score is chance at the preset's own kwargs."""
    count, auto = preset("count"), preset("autoencode")
    assert count.env_kwargs == {"k": 8, "n_symbols": 3, "queries": 3} and auto.env_kwargs == {"k": 4, "n_symbols": 4}
    assert count.ref_min_score == pytest.approx(2 / 9 - 1, abs=0.005) and auto.ref_min_score == 2 / 4 - 1


# -------------------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("env_id,kwargs", [("seqrl/Count-v0", {"k": 6}), ("seqrl/Autoencode-v0", {"k": 5}),
                                            ("seqrl/RepeatPrevious-v0", {"k": 3})])
def test_seeding_reproduces_episodes(env_id, kwargs):
    def episode(seed, reset_seed=True):
        env = gym.make(env_id, **kwargs)
        obs, _ = env.reset(seed=seed)
        if not reset_seed:  # a second episode continues the generator the seed started
            while not env.step(0)[2]:
                pass
            obs, _ = env.reset()
        out, done = [obs], False
        while not done:
            obs, rew, done, _, _ = env.step(0)
            out += [obs, np.array([rew])]
        return np.concatenate(out)

    assert np.array_equal(episode(0), episode(0)) and np.array_equal(episode(0, False), episode(0, False))
    assert not np.array_equal(episode(0), episode(1)) and not np.array_equal(episode(0), episode(0, False))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make,message", [
    (lambda: Count(k=0), "Count k must be an integer >= 1, got 0"),
    (lambda: Count(n_symbols=1), "Count n_symbols must be an integer >= 2"),
    (lambda: Count(queries=0), "Count queries must be an integer >= 1"),
    (lambda: gym.make("seqrl/Count-v0", k=2.5), "Count k must be an integer >= 1, got 2.5"),
    (lambda: Count(k=True), "Count k must be an integer >= 1, got True"),
    (lambda: Autoencode(k=-1), "Autoencode k must be an integer >= 1, got -1"),
    (lambda: gym.make("seqrl/Autoencode-v0", n_symbols="4"), "Autoencode n_symbols must be an integer >= 2"),
    (lambda: RepeatPrevious(queries=0), "RepeatPrevious queries must be an integer >= 1"),
])
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_argument_is_an_error():
    with pytest.raises(TypeError, match="length"):
        gym.make("seqrl/Count-v0", length=3)


# ------------------------------------------------------------- Tuple and MultiDiscrete, online agents
class TupleCue(gym.Env):
    """A cue (Discrete(2)) at the first step, then `gap` blank steps, then a Box flag: answer the cue.
    Observation Tuple((Discrete(3), Box(2))): 2 is "no cue"."""

    def __init__(self, gap=2):
        self.gap = gap
        self.observation_space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0.0, 1.0, (2,), np.float32)))
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return (int(self._cue) if self._t == 0 else 2, np.array([self._t == self.gap + 1, 1.0], np.float32))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(2)), 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        if self._t > self.gap + 1:
            return self._obs(), 1.0 if int(action) == self._cue else -1.0, True, False, {}
        return self._obs(), 0.0, False, False, {}


class MultiDiscreteCue(TupleCue):
    """TupleCue with a MultiDiscrete([3, 2]) observation: [cue or 2, at the answer step]."""

    def __init__(self, gap=2):
        super().__init__(gap)
        self.observation_space = gym.spaces.MultiDiscrete([3, 2])

    def _obs(self):
        return np.array([self._cue if self._t == 0 else 2, self._t == self.gap + 1], np.int64)


for _name, _cls in (("TupleCue", TupleCue), ("MultiDiscreteCue", MultiDiscreteCue)):
    if f"seqrl-test/{_name}-v0" not in gym.registry:
        gym.register(id=f"seqrl-test/{_name}-v0", entry_point=_cls)

TINY = {"gtrxl": ["policy.d_model=16", "policy.gtrxl.n_layers=1", "policy.gtrxl.n_heads=2", "policy.gtrxl.d_ff=32",
                  "policy.gtrxl.memory=8"],
        "lstm_ppo": ["policy.d_model=16"]}


@pytest.mark.parametrize("env_name", ["TupleCue", "MultiDiscreteCue"])
@pytest.mark.parametrize("agent", ["gtrxl", "lstm_ppo"])
def test_tuple_and_multidiscrete_observations_train_online(agent, env_name, tmp_path):
    """A few hundred env steps of PPO through the env source: the rollout keeps the observation's leaves,
    the finished episodes reach the store in the env's own space, training stays finite, evaluation runs."""
    env = EnvPreset(name=env_name, env_id=f"seqrl-test/{env_name}-v0", max_episode_steps=6, target_returns=(1.0,),
                    env_kwargs={"gap": 2})
    torch.manual_seed(0)
    p = load_agent(agent, parse_overrides(TINY[agent] + [
        "source.n_envs=4", "source.n_steps=16", "source.env_steps=320", "policy.seq_len=8", "policy.minibatches=2",
        "policy.epochs=2", "trainer.eval_episodes=8", "trainer.log_every=1", "trainer.checkpoint_every=0"]))
    spec = TaskSpec.from_env(env)
    policy = policy_class(p.agent)(p.policy, spec)
    t = Trainer(policy, EnvSource(p.source, env), p, tmp_path)
    ro = t.source.collect(policy)
    if env_name == "TupleCue":
        assert set(ro.obs) == {"0", "1"} and ro.obs["0"].shape == (16, 4) and ro.obs["1"].shape == (16, 4, 2)
    else:
        assert ro.obs.shape == (16, 4, 2) and ro.obs.dtype == torch.int64
    assert ro.term.sum() == 16  # 4 envs, episodes of 4 steps
    assert t.source.store.observation_space == spec.observation_space and t.source.store.num_episodes == 16
    t.source.close()
    t = Trainer(policy, EnvSource(p.source, env), p, tmp_path / "run")
    res = t.run()[""]
    assert t.source.env_steps == 320 and t.step == 5 * 2 * 2  # 5 collections x 2 epochs x 2 minibatches
    assert all(torch.isfinite(q).all() for q in policy.parameters())
    assert -1.0 <= res["return_mean"] <= 1.0 and res["length_mean"] == 4.0
