"""Observation spaces beyond a flat Box or Discrete: Dict, Tuple (nested too), MultiDiscrete, MultiBinary and
uint8 images, through space descriptions, the store and its samplers, Minari, the tokenizer and the agents.

Datasets are made here: random rollouts of gymnasium-robotics' PointMaze (Dict observations), popgym's
CountRecall (MultiDiscrete) and Autoencode (Tuple), and Glimpse, a tiny env of uint8 images below."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrl.checkpoint import policy_from_checkpoint
from seqrl.data.collect import rollout
from seqrl.data.minari_io import check_env_matches, load_store, write_dataset
from seqrl.data.samplers import context_query, histories, sequences, windows_at
from seqrl.data.store import (ReplayStore, check_spaces, flatten_obs, leaf_spaces, obs_tensor, same_space,
                              space_from_dict, space_to_dict, unflatten_obs, unit_stats)
from seqrl.errors import DataError
from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent, parse_overrides
from seqrl.runners.evaluate import evaluate
from seqrl.runners.sources import DatasetSource, EnvSource
from seqrl.runners.trainer import Trainer
from seqrl.tokenizer import ImageEncoder, TrajectoryTokenizer

S = gym.spaces
ACT = S.Box(-1, 1, (2,), np.float32)
# every kind of leaf, nested: Dict sorts its keys, so the leaves are cam count door goal/0 goal/1 inner/a keys pos room
RICH = S.Dict({
    "pos": S.Box(-np.inf, np.inf, (3,), np.float32),  # float features: normalised
    "cam": S.Box(0, 255, (8, 8, 3), np.uint8),  # an image: CNN
    "count": S.Box(0, 1000, (2,), np.int32),  # integer features: normalised too; [0] holds the step's id below
    "room": S.Discrete(4, start=1),
    "keys": S.MultiDiscrete(np.array([[2, 3], [4, 2]]), start=np.array([[0, 1], [-1, 0]])),
    "door": S.MultiBinary(3),
    "goal": S.Tuple((S.Box(-1, 1, (2,), np.float32), S.Discrete(3))),
    "inner": S.Dict({"a": S.Box(-1, 1, (1,), np.float64)}),
})
TINY_DT = ["policy.embed_dim=16", "policy.n_layers=1", "policy.context_len=3", "source.batch_size=8",
           "trainer.steps=3", "trainer.log_every=1", "trainer.eval_episodes=2", "trainer.warmup_steps=1",
           "trainer.checkpoint_every=0"]


def rich_episodes(lengths, seed=0):
    """Episodes of RICH observations, half as Minari gives them (nested dicts of T+1 rows), half step by
    step (a list of T+1 observations); count[0] numbers the steps 0, 1, 2, ... across episodes (the final
    observations keep a random count)."""
    RICH.seed(seed)
    rng, eps, uid = np.random.default_rng(seed), [], 0
    for i, T in enumerate(lengths):
        steps = [RICH.sample() for _ in range(T + 1)]
        for o in steps[:-1]:
            o["count"][0], uid = uid, uid + 1
        obs = steps if i % 2 else unflatten_obs({k: np.stack([flatten_obs(o)[k] for o in steps])
                                                 for k in leaf_spaces(RICH)}, RICH)
        eps.append({"obs": obs, "act": rng.uniform(-1, 1, (T, 2)), "rew": rng.standard_normal(T),
                    "term": np.eye(T, dtype=bool)[-1], "trunc": np.zeros(T, bool)})
    return eps


def random_episodes(env_id, n, seed=0, **make_kwargs):
    """n episodes of uniformly random actions, observations step by step (T+1 of them, final included)."""
    env = gym.make(env_id, **make_kwargs)
    env.action_space.seed(seed)
    eps = []
    for i in range(n):
        o, _ = env.reset(seed=seed + i)
        ep = {"obs": [o], "act": [], "rew": [], "term": [], "trunc": []}
        done = False
        while not done:
            a = env.action_space.sample()
            o, r, term, trunc, _ = env.step(a)
            done = term or trunc
            for k, v in (("obs", o), ("act", a), ("rew", r), ("term", term), ("trunc", trunc)):
                ep[k].append(v)
        eps.append({k: v if k == "obs" else np.asarray(v) for k, v in ep.items()})
    env.close()
    return eps


def leaf_rows(eps):
    """{leaf: (N, ...)} the stored steps' observations, and {leaf: (E, ...)} the final ones, by hand."""
    per_ep = [{k: np.stack([flatten_obs(o)[k] for o in e["obs"]]) if isinstance(e["obs"], list)
               else flatten_obs(e["obs"])[k] for k in leaf_spaces(RICH)} for e in eps]
    return ({k: np.concatenate([p[k][:-1] for p in per_ep]) for k in per_ep[0]},
            {k: np.stack([p[k][-1] for p in per_ep]) for k in per_ep[0]})


def trainer(agent, store, env, tmp_path, extra=()):
    torch.manual_seed(0)
    preset = load_agent(agent, parse_overrides((TINY_DT if agent in ("dt", "dm") else TINY_DT[3:]) + list(extra)))
    policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env))
    return policy, Trainer(policy, DatasetSource(preset.source, store), preset, tmp_path)


def all_finite(results):
    vals = [v for summary in results.values() for v in summary.values()]
    return bool(vals) and all(np.isfinite(v) for v in vals)


# ------------------------------------------------------------------------------------------ spaces
@pytest.mark.parametrize("space", [
    RICH, S.Tuple((S.MultiDiscrete([3, 5]), S.Dict({"x": S.MultiBinary((2, 2))}))), S.Discrete(5, start=-2),
    S.MultiDiscrete(np.array([[2, 3], [4, 5]]), np.int32, start=np.array([[1, 0], [0, -3]])), S.MultiBinary(4),
    S.Box(0, 255, (4, 5, 3), np.uint8)])
def test_space_descriptions_round_trip_through_json(space):
    back = space_from_dict(json.loads(json.dumps(space_to_dict(space))))
    assert back == space and type(back) is type(space)
    assert same_space(back, space)


def test_old_descriptions_unsupported_spaces_and_keys():
    assert space_from_dict({"type": "Discrete", "n": 3}) == S.Discrete(3)  # written before starts were kept
    assert space_from_dict({"type": "Box", "low": [0], "high": [1], "shape": [1]}).dtype == np.float32
    with pytest.raises(DataError, match="unsupported space Text"):
        space_to_dict(S.Dict({"name": S.Text(4)}))
    with pytest.raises(DataError, match="observation leaf 'a/name' is Text"):
        ReplayStore(S.Dict({"a": S.Dict({"name": S.Text(4)})}), ACT)
    with pytest.raises(DataError, match="Dict key 'a/b': keys must be non-empty strings without '/'"):
        leaf_spaces(S.Dict({"a/b": S.Discrete(2)}))
    with pytest.raises(DataError, match="unsupported space MultiDiscrete.* for actions"):
        ReplayStore(RICH, S.MultiDiscrete([2, 2]))
    with pytest.raises(DataError, match="Discrete actions must start at 0"):
        ReplayStore(RICH, S.Discrete(3, start=1))
    assert list(leaf_spaces(RICH)) == ["cam", "count", "door", "goal/0", "goal/1", "inner/a", "keys", "pos", "room"]
    assert not same_space(RICH, S.Dict({**RICH.spaces, "room": S.Discrete(4)}))  # another start


# ------------------------------------------------------------------------------------------ store
@pytest.fixture(scope="module")
def rich():
    eps = rich_episodes([4, 1, 6, 3])
    return eps, ReplayStore.from_episodes(eps, RICH, ACT)


def test_store_keeps_one_native_column_per_leaf(rich, tmp_path):
    eps, store = rich
    obs, final = leaf_rows(eps)
    col = store.column("obs")
    assert list(col) == list(leaf_spaces(RICH))
    dtypes = {"cam": np.uint8, "count": np.int32, "door": np.int8, "goal/0": np.float32, "goal/1": np.int64,
              "inner/a": np.float32, "keys": np.int64, "pos": np.float32, "room": np.int64}  # float64 kept as float32
    for k, dt in dtypes.items():
        assert col[k].dtype == dt and store.final_obs[k].dtype == dt, k
        np.testing.assert_array_equal(col[k], obs[k].astype(dt))
        np.testing.assert_array_equal(store.final_obs[k], final[k].astype(dt))
    mean, std = store.obs_stats()  # per normalised leaf: the Box leaves that are no image
    assert set(mean) == set(std) == {"count", "goal/0", "inner/a", "pos"}
    for k in mean:
        wide = col[k].astype(np.float64)
        np.testing.assert_allclose(mean[k], wide.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std[k], wide.std(0) + 1e-6, rtol=1e-5)
    back = ReplayStore.load(store.save(tmp_path / "rich.npz"))
    assert back.observation_space == RICH
    for k in col:
        np.testing.assert_array_equal(back.column("obs")[k], col[k])
        np.testing.assert_array_equal(back.final_obs[k], store.final_obs[k])
        assert back.column("obs")[k].dtype == col[k].dtype


def check_rows(store, batch):
    """Every real position of a batch holds the stored step its id (count[0]) names, in every leaf, and its
    next observation (the episode's final one at its last step); padding is zero."""
    col, final = store.column("obs"), store.final_obs
    ep_of, last = store.column("episode"), np.r_[store.ep_start[1:] - 1]
    ids = batch.obs["count"][..., 0].numpy()
    m = batch.mask.numpy()
    assert m.any()
    for k in col:
        o, nxt = batch.obs[k].numpy(), batch.next_obs[k].numpy()
        assert o.shape == (*m.shape, *col[k].shape[1:]) and o.dtype == col[k].dtype
        np.testing.assert_array_equal(o[m], col[k][ids[m]])
        want = np.stack([final[k][ep_of[i]] if i in last else col[k][i + 1] for i in ids[m]])
        np.testing.assert_array_equal(nxt[m], want)
        assert not o[~m].any() and not nxt[~m].any()


def test_samplers_gather_every_leaf(rich):
    _, store = rich
    g = torch.Generator().manual_seed(0)
    b = windows_at(store, [0, 3, 4, 5, 12], 4)
    check_rows(store, b)
    assert b.mask.tolist()[1] == [True, False, False, False]  # the episode ends after one step: padding
    for batch in (histories(store, 16, 5, g), sequences(store, 16, 3, g), context_query(store, 16, 4, g)):
        check_rows(store, batch)
    half = b.split(5, 2)
    assert set(half.obs) == set(b.obs) and torch.equal(half.obs["cam"], b.obs["cam"][2:3])
    assert torch.equal(b.to("cpu").next_obs["keys"], b.next_obs["keys"])


def test_bad_dict_observations_name_the_problem():
    good = rich_episodes([3])[0]
    cols = flatten_obs(good["obs"])

    def with_obs(o):
        return [dict(good, obs=o)]

    with pytest.raises(DataError, match=r"keys differ from the space's: missing \['room'\], extra \['rooms'\]"):
        ReplayStore.from_episodes(with_obs({**{k: v for k, v in cols.items() if k != "room"}, "rooms": cols["room"]}),
                                  RICH, ACT)
    with pytest.raises(DataError, match="observations 'pos' have shape \\(2,\\) per step, the space says \\(3,\\)"):
        ReplayStore.from_episodes(with_obs({**cols, "pos": cols["pos"][:, :2]}), RICH, ACT)
    with pytest.raises(DataError, match="3 observations of 'door' for 3 steps; give T\\+1"):
        ReplayStore.from_episodes(with_obs({**cols, "door": cols["door"][:3]}), RICH, ACT)
    bad = cols["keys"].copy()
    bad[0, 1, 0] = 4  # the third dimension holds -1..2
    with pytest.raises(DataError, match=r"observations 'keys' outside MultiDiscrete"):
        ReplayStore.from_episodes(with_obs({**cols, "keys": bad}), RICH, ACT)
    with pytest.raises(DataError, match=r"observations 'room' outside Discrete\(4, start=1\)"):
        ReplayStore.from_episodes(with_obs({**cols, "room": cols["room"] * 0}), RICH, ACT)
    with pytest.raises(DataError, match="observations are not Dict observations"):
        ReplayStore.from_episodes(with_obs(np.zeros((4, 3))), RICH, ACT)


# ------------------------------------------------------------------------------------------ tokenizer
def test_rich_token_by_hand(rich):
    """The "s" token of a Dict observation recomputed in float64 from the module's weights: the sum of every
    leaf's embedding (normalised Box leaves, the CNN on the HWC image / 255, tables with their starts and
    offsets, MultiBinary as floats), the timestep embedding, LayerNorm. Each wrong variant below misses."""
    _, store = rich
    mean, std = store.obs_stats()
    torch.manual_seed(0)
    tok = TrajectoryTokenizer("R s a", RICH, ACT, d_model=8, readout={"action": "s"}, obs_mean=mean, obs_std=std,
                              max_timestep=20).eval()
    obs = {k: v[:, 0] for k, v in windows_at(store, [0, 2, 5, 9, 13], 1).obs.items()}  # (5, ...) each
    t = torch.tensor([0, 2, 1, 20, 30])
    leaf = dict(zip(tok.obs_keys, tok.embed["s"]))
    d = {k: v.double() for k, v in obs.items()}

    def lin(layer, x):
        return x @ layer.weight.double().T + layer.bias.double()

    def cnn(enc, img):  # (n, H, W, C) uint8 -> (n, d)
        x = img.permute(0, 3, 1, 2) / 255.0
        for conv in (enc.conv[0], enc.conv[2]):
            x = F.relu(F.conv2d(x, conv.weight.double(), conv.bias.double(), conv.stride, conv.padding))
        return lin(enc.out, x.flatten(1))

    def norm(k):
        return (d[k] - torch.as_tensor(mean[k], dtype=torch.float64)) / torch.as_tensor(std[k], dtype=torch.float64)

    table = leaf["keys"].net.table.weight.double()
    offset = torch.tensor([0, 2, 5, 9]) - torch.tensor([0, 1, -1, 0])  # cumulated nvec [2, 3, 4, 2] minus starts
    parts = {"pos": lin(leaf["pos"].net, norm("pos")), "count": lin(leaf["count"].net, norm("count")),
             "goal/0": lin(leaf["goal/0"].net, norm("goal/0")), "inner/a": lin(leaf["inner/a"].net, norm("inner/a")),
             "cam": cnn(leaf["cam"].net, d["cam"]), "door": lin(leaf["door"].net, d["door"]),
             "room": leaf["room"].net.weight.double()[obs["room"] - 1],
             "goal/1": leaf["goal/1"].net.weight.double()[obs["goal/1"]],
             "keys": table[obs["keys"].reshape(5, 4) + offset].sum(1)}
    ts, ln = tok.timestep.weight.double()[t.clamp(max=20)], tok.norm

    def finish(e):
        e = e + ts
        e = (e - e.mean(-1, keepdim=True)) / torch.sqrt(e.var(-1, unbiased=False, keepdim=True) + ln.eps)
        return e * ln.weight.double() + ln.bias.double()

    out = tok.step("s", obs, t).double()
    torch.testing.assert_close(out, finish(sum(parts.values())), atol=1e-5, rtol=1e-5)
    wrong = {"a leaf left out": sum(v for k, v in parts.items() if k != "door"),
             "pos not normalised": sum(parts.values()) - parts["pos"] + lin(leaf["pos"].net, d["pos"]),
             "image not scaled": sum(parts.values()) - parts["cam"] + cnn(leaf["cam"].net, d["cam"] * 255),
             "room's start ignored": sum(parts.values()) - parts["room"]
             + leaf["room"].net.weight.double()[(obs["room"]) % 4]}
    for what, e in wrong.items():
        assert not torch.allclose(out, finish(e), atol=1e-3, rtol=1e-3), what
    # the windowed forward embeds the same tokens as step()
    b = windows_at(store, [0, 5], 3)
    full = tok(b).x.view(2, 3, 3, 8)
    for k in range(3):
        torch.testing.assert_close(full[:, k, 1], tok.step("s", {n: v[:, k] for n, v in b.obs.items()},
                                                           b.timestep[:, k]))
    with pytest.raises(DataError, match=r"needs a dict of leaves \['cam', .*got \['cam', 'count'\]"):
        tok.step("s", {k: obs[k] for k in ("cam", "count")}, t)
    # the statistics are buffers of their leaf: the state_dict carries them
    sd = tok.state_dict()
    torch.testing.assert_close(sd[f"embed.s.{tok.obs_keys.index('pos')}.mean"], torch.as_tensor(mean["pos"]))


def test_image_channel_axis_and_trunks():
    assert ImageEncoder((8, 8, 3), 4).channels_last and ImageEncoder((7, 7, 3), 4).channels_last
    assert not ImageEncoder((3, 8, 8), 4).channels_last and not ImageEncoder((4, 84, 84), 4).channels_last
    big = ImageEncoder((84, 84, 4), 4)
    assert big.channels_last and big.conv[0].kernel_size == (8, 8) and big.conv[0].stride == (4, 4)  # Nature DQN
    assert ImageEncoder((35, 40, 3), 4).conv[0].kernel_size == (3, 3)  # too small for it
    torch.manual_seed(0)
    hwc, chw = ImageEncoder((6, 9, 3), 5), ImageEncoder((3, 6, 9), 5)
    chw.load_state_dict(hwc.state_dict())  # the same network, reading the other layout
    img = torch.randint(0, 256, (2, 4, 6, 9, 3), dtype=torch.uint8)  # (B, K, H, W, C)
    out = hwc(img)
    assert out.shape == (2, 4, 5)
    torch.testing.assert_close(chw(img.permute(0, 1, 4, 2, 3)), out)
    assert not torch.allclose(hwc(img.transpose(2, 3).reshape(2, 4, 6, 9, 3)), out)


def test_online_spec_identity_statistics_round_trip():
    env = EnvPreset(name="x", env_id="CartPole-v1")
    spec = TaskSpec(RICH, ACT, *unit_stats(RICH), env, {})
    back = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back.observation_space == RICH and set(back.obs_mean) == {"count", "goal/0", "inner/a", "pos"}
    for k, v in spec.obs_mean.items():
        np.testing.assert_array_equal(back.obs_mean[k], v)
        np.testing.assert_array_equal(back.obs_std[k], spec.obs_std[k])
        assert back.obs_mean[k].dtype == np.float32 and not v.any() and (spec.obs_std[k] == 1).all()


# ------------------------------------------------------------------------------------------ PointMaze (Dict)
@pytest.fixture(scope="module")
def pointmaze():
    robotics = pytest.importorskip("gymnasium_robotics", reason="PointMaze needs gymnasium-robotics")
    gym.register_envs(robotics)
    return "PointMaze_UMaze-v3"


def test_pointmaze_dict_dataset_trains_and_evaluates(pointmaze, minari_root, tmp_path):
    space = gym.make(pointmaze).action_space
    space.seed(0)
    eps = rollout(lambda o: np.stack([space.sample() for _ in range(2)]), pointmaze, 40, 2, seed=0,
                  max_episode_steps=12)  # seqrl's collector on a vector env of Dict observations
    assert set(eps[0]["obs"]) == {"achieved_goal", "desired_goal", "observation"}
    assert all(len(v) == len(eps[0]["rew"]) + 1 for v in eps[0]["obs"].values())
    write_dataset("seqrl/pointmaze/random-v0", eps, pointmaze, 0.0, 1.0, "random", "Dict observations")
    store = load_store("seqrl/pointmaze/random-v0")
    assert isinstance(store.observation_space, S.Dict) and len(store) == 4 * 12
    for k in ("achieved_goal", "desired_goal", "observation"):
        want = np.concatenate([e["obs"][k][:-1] for e in eps])
        assert store.column("obs")[k].dtype == np.float32  # the env's float64
        np.testing.assert_allclose(store.column("obs")[k], want, rtol=1e-6)
        np.testing.assert_allclose(store.final_obs[k], [e["obs"][k][-1] for e in eps], rtol=1e-6)
    check_env_matches(store, pointmaze)
    env = EnvPreset(name="pointmaze", env_id=pointmaze, max_episode_steps=10, target_returns=(1.0,), reward_scale=1.0)
    policy, t = trainer("dt", store, env, tmp_path / "dt")
    results = t.run()
    assert set(results) == {"target=1"} and all_finite(results) and results["target=1"]["length_mean"] == 10
    again, _, _ = policy_from_checkpoint(tmp_path / "dt" / "checkpoint.pt")  # the per-leaf statistics travel
    for k, m in store.obs_stats()[0].items():
        np.testing.assert_allclose(again.spec.obs_mean[k], m)
    for a, b in zip(again.state_dict().values(), policy.state_dict().values()):
        torch.testing.assert_close(a, b)
    dm, t = trainer("dm", store, env, tmp_path / "dm")  # the next-state head is off for Dict observations
    assert dm.net.state_head is None
    terms = dm.losses(dm.sample(store, 4, torch.Generator().manual_seed(0)))
    assert "loss_state" not in terms and all(torch.isfinite(v) for v in terms.values())
    assert all_finite(t.run())
    bc, t = trainer("bc", store, env, tmp_path / "bc")
    terms = bc.losses(bc.sample(store, 4, torch.Generator().manual_seed(0)))
    terms["loss_action"].backward()
    assert torch.isfinite(terms["loss_action"]) and bc.tokenizer.embed["s"][0].net.weight.grad.abs().sum() > 0
    assert all_finite(t.run())  # BC acts on Dict observations too


def test_dict_keys_differing_from_the_env_are_named(pointmaze):
    sp = S.Dict({"observation": S.Box(-np.inf, np.inf, (4,)), "achieved_goal": S.Box(-np.inf, np.inf, (2,)),
                 "goal": S.Box(-np.inf, np.inf, (2,))})
    sp.seed(0)
    ep = {"obs": [sp.sample() for _ in range(4)], "act": np.zeros((3, 2)), "rew": np.zeros(3),
          "term": np.zeros(3, bool), "trunc": np.zeros(3, bool)}
    store = ReplayStore.from_episodes([ep], sp, S.Box(-1, 1, (2,)), meta={"dataset_id": "seqrl/pointmaze/odd-v0"})
    with pytest.raises(DataError, match=r"seqrl/pointmaze/odd-v0: observation space .*: missing keys "
                                        r"\['desired_goal'\] .*; extra keys \['goal'\]"):
        check_env_matches(store, pointmaze)
    inner = S.Dict({**sp.spaces, "desired_goal": S.Box(-np.inf, np.inf, (3,))})
    del inner.spaces["goal"]
    env = gym.make(pointmaze)
    with pytest.raises(DataError, match=r"leaf 'desired_goal': Box.*\(3,\).* vs Box.*\(2,\)"):
        check_spaces(inner, env.action_space, env, "the agent")
    env.close()


# ------------------------------------------------------------------------------------------ images
class Glimpse(gym.Env):
    """8x8 RGB noise with one white pixel; the action (Discrete(4)) names its quadrant, reward 1 when right;
    6 steps an episode."""

    observation_space = S.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = S.Discrete(4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def _draw(self):
        self.pos = self.np_random.integers(0, 8, 2)
        img = self.np_random.integers(0, 60, (8, 8, 3), dtype=np.uint8)
        img[self.pos[0], self.pos[1]] = 255
        return img

    def step(self, action):
        reward = float(action == 2 * (self.pos[0] >= 4) + (self.pos[1] >= 4))
        self.t += 1
        return self._draw(), reward, self.t >= 6, False, {}


if "seqrl_test/Glimpse-v0" not in gym.registry:  # a string entry point: Minari writes the env's spec as JSON
    gym.register("seqrl_test/Glimpse-v0", entry_point="test_spaces:Glimpse", max_episode_steps=6)


def test_image_dataset_stays_uint8_trains_and_evaluates(minari_root, tmp_path):
    eps = random_episodes("seqrl_test/Glimpse-v0", 5)
    write_dataset("seqrl/glimpse/random-v0", eps, "seqrl_test/Glimpse-v0", 0.0, 6.0, "random", "uint8 images")
    store = load_store("seqrl/glimpse/random-v0")
    obs = store.column("obs")
    assert obs.dtype == np.uint8 and obs.shape == (30, 8, 8, 3)
    np.testing.assert_array_equal(obs, np.concatenate([np.stack(e["obs"][:-1]) for e in eps]))  # exact, no JPEG
    np.testing.assert_array_equal(store.final_obs, [e["obs"][-1] for e in eps])
    env = EnvPreset(name="glimpse", env_id="seqrl_test/Glimpse-v0", max_episode_steps=6, target_returns=(6.0,),
                    reward_scale=1.0)
    for agent in ("dt", "bc", "dm"):
        policy, t = trainer(agent, store, env, tmp_path / agent)
        assert type(policy.tokenizer.embed["s"]) is ImageEncoder
        results = t.run()
        assert all_finite(results) and next(iter(results.values()))["length_mean"] == 6


# ------------------------------------------------------------------------------------------ popgym
@pytest.fixture(scope="module")
def popgym():
    return pytest.importorskip("popgym", reason="MultiDiscrete and Tuple observations come from popgym")


def test_multidiscrete_observations(popgym, tmp_path):
    eps = random_episodes("popgym-CountRecallEasy-v0", 2, max_episode_steps=8)
    space = gym.make("popgym-CountRecallEasy-v0").observation_space
    store = ReplayStore.from_episodes(eps, space, S.Discrete(27))
    assert isinstance(space, S.MultiDiscrete) and store.column("obs").dtype == np.int64
    back = ReplayStore.load(store.save(tmp_path / "md.npz"))
    assert back.observation_space == space
    np.testing.assert_array_equal(back.column("obs"), np.concatenate([np.stack(e["obs"][:-1]) for e in eps]))
    np.testing.assert_array_equal(back.final_obs, [e["obs"][-1] for e in eps])
    env = EnvPreset(name="countrecall", env_id="popgym-CountRecallEasy-v0", max_episode_steps=8, target_returns=(1.0,))
    policy, _ = trainer("dt", store, env, tmp_path / "dt")
    emb = policy.tokenizer.embed["s"]
    assert emb.table.num_embeddings == int(space.nvec.sum())
    x = torch.tensor([[0, 1], [1, 0]])
    torch.testing.assert_close(emb(x), emb.table.weight[[0, 1]] + emb.table.weight[[3, 2]])  # rows v + offset (0, 2)
    terms = policy.losses(policy.sample(store, 4, torch.Generator().manual_seed(0)))
    terms["loss_action"].backward()
    assert torch.isfinite(terms["loss_action"]) and emb.table.weight.grad.abs().sum() > 0


def test_tuple_observations_through_minari_and_ppo(popgym, minari_root, tmp_path):
    env_id = "popgym-AutoencodeEasy-v0"
    eps = random_episodes(env_id, 2, max_episode_steps=7)
    write_dataset("seqrl/autoencode/random-v0", eps, env_id, 0.0, 1.0, "random", "Tuple observations")
    store = load_store("seqrl/autoencode/random-v0")
    assert isinstance(store.observation_space, S.Tuple) and list(store.column("obs")) == ["0", "1"]
    for i in ("0", "1"):
        np.testing.assert_array_equal(store.column("obs")[i], [o[int(i)] for e in eps for o in e["obs"][:-1]])
    # recurrent PPO online: Tuple observations in the rollout buffers, truncated episodes bootstrapped
    # from their final observation, the finished episodes in the env source's store, evaluation
    env = EnvPreset(name="autoencode", env_id=env_id, max_episode_steps=5, target_returns=(1.0,))
    torch.manual_seed(0)
    preset = load_agent("lstm_ppo", parse_overrides([
        "policy.d_model=16", "source.n_envs=2", "source.n_steps=8", "source.env_steps=16", "policy.seq_len=4",
        "policy.minibatches=2", "policy.epochs=1", "trainer.eval_episodes=2", "trainer.log_every=1"]))
    policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_env(env))
    t = Trainer(policy, EnvSource(preset.source, env), preset, tmp_path / "ppo")
    ro = t.source.collect(policy)
    assert set(ro.obs) == {"0", "1"} and ro.obs["1"].shape == (8, 2) and ro.trunc.any()
    assert (ro.final_extras["value"][ro.trunc] != 0).all()
    assert isinstance(t.source.store.observation_space, S.Tuple) and t.source.store.num_episodes >= 2
    t.source.close()
    t = Trainer(policy, EnvSource(preset.source, env), preset, tmp_path / "ppo2")
    assert all_finite(t.run())
    res = evaluate(policy, env, 2)
    assert np.isfinite(res.returns).all() and (res.lengths == 5).all()


def test_obs_tensor_flattens_what_vector_envs_give():
    obs = {"a": np.zeros((2, 3)), "b": (np.ones(2, np.int64), {"c": np.full((2, 1), 7, np.uint8)})}
    out = obs_tensor(obs, "cpu")
    assert list(out) == ["a", "b/0", "b/1/c"] and out["b/1/c"].dtype == torch.uint8 and out["a"].shape == (2, 3)
    assert torch.equal(obs_tensor(np.eye(2), "cpu"), torch.eye(2, dtype=torch.float64))
