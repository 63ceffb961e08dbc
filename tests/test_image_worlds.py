"""The grid worlds for world models (seqrl/envs/gridworlds.py: FourRooms, MultiDoorsKeys), their scripted
exploration datasets (seqrl/data/wm_collect.py) through `seqrl collect`, and one world-model update on them."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import seqrl.envs  # noqa: F401  registers the ids
from seqrl.data.wm_collect import (TASKS, build_wm_dataset, check_env_kwargs, distances_to,
                                   explore_episodes, load_image_store, wm_task)
from seqrl.envs.gridworlds import FLOOR_COLOURS, KEY_COLOURS, FourRooms, MultiDoorsKeys
from seqrl.errors import PresetError

IDS = ["seqrl/FourRooms-v0", "seqrl/MultiDoorsKeys-v0"]


def run(env, actions):
    out = [env.reset(seed=7)]
    out += [env.step(a) for a in actions]
    return out


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_dtypes_and_determinism(env_id):
    env = gym.make(env_id)
    assert env.observation_space == gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(4)
    acts = np.random.default_rng(0).integers(4, size=60)
    a, b = run(env, acts), run(gym.make(env_id), acts)
    for x, y in zip(a, b):  # same seed, same actions: same frames, rewards, flags and info
        assert x[0].dtype == np.uint8 and x[0].shape == (32, 32, 3) and env.observation_space.contains(x[0])
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    assert all(isinstance(x[1], float) for x in a[1:])
    frames = np.stack([x[0] for x in a])
    assert len(np.unique(frames.reshape(len(frames), -1), axis=0)) > 10  # the view moves with the agent
    other = [gym.make(env_id).reset(seed=s)[0] for s in range(8, 12)]
    assert any(not np.array_equal(a[0][0], o) for o in other)  # another seed, another level


def test_partial_view_is_partial():
    env = FourRooms()
    frame, info = env.reset(seed=3)
    r, c = info["pos"]
    n = env._wall.shape[0]
    far = (n - 2 if r < n // 2 else 1, n - 2 if c < n // 2 else 1)  # a cell in the opposite room, > 3 cells away
    assert max(abs(far[0] - r), abs(far[1] - c)) > env.view // 2
    env._base[far] = [255, 0, 255]
    np.testing.assert_array_equal(env._draw(), frame)  # a change out of view: the same frame
    near = (r, c + 1) if not env._wall[r, c + 1] else (r, c - 1)
    env._base[near] = [255, 0, 255]
    assert not np.array_equal(env._draw(), frame)  # a change in view: another frame
    # Multi-Doors-Keys: taking away a key out of view leaves the frame as it was; one in view changes it
    mdk = MultiDoorsKeys()
    for seed in range(20):
        frame, info = mdk.reset(seed=seed)
        gap = {cell: max(abs(cell[0] - info["pos"][0]), abs(cell[1] - info["pos"][1])) for cell in mdk.keys}
        if min(gap.values()) <= mdk.view // 2 < max(gap.values()):
            break
    else:
        pytest.fail("no level with keys both in and out of view")
    far, near = max(gap, key=gap.get), min(gap, key=gap.get)
    mdk._marked[far] = False
    np.testing.assert_array_equal(mdk._draw(), frame)
    mdk._marked[near] = False
    assert not np.array_equal(mdk._draw(), frame)


def test_room_looks_are_drawn_per_episode_and_rooms_connect():
    env = FourRooms(objects=3)
    looks = set()
    for seed in range(6):
        frame, info = env.reset(seed=seed)
        floors = tuple(int(f) for f in env.floors)
        assert len(set(floors)) == 4  # four different floors in one episode
        looks.add(floors)
        own = FLOOR_COLOURS[env.floors[info["room"]]]
        assert (frame.reshape(-1, 3) == own).all(1).any()  # the agent's room floor is in view
        assert int(env._marked.sum()) == 4 * 3  # objects per room
        dist = distances_to(env.walkable(), env.pos)
        assert (dist[env.walkable()] >= 0).all()  # every cell reachable: the doorways join the rooms
        assert len(env.doorways) == 4 and all(env.walkable()[d] for d in env.doorways)
    assert len(looks) == 6  # six episodes, six different room looks


def test_keys_doors_strip_and_rewards():
    env = MultiDoorsKeys(n_keys=3, key_reward=0.25, door_reward=2.0)
    frame, info = env.reset(seed=0)
    assert info["held"] == () and not frame[0:3].any()  # empty strip
    (k_cell, k), *_ = sorted(env.keys.items(), key=lambda kv: kv[1])
    door = next(d for d, colour in env.doors.items() if colour == k)
    wrong = next(d for d, colour in env.doors.items() if colour != k)
    above = lambda d: (d[0] - 1, d[1])  # noqa: E731  the hall cell in front of a door (doors are below the hall)
    assert above(door) not in env.keys and above(wrong) not in env.keys  # (this seed's layout)

    def go(cell):  # put the agent on a cell without stepping (test set-up)
        env._pos = np.array(cell)

    # without the key, the door is a wall: no reward, not opened, the agent stays
    go(above(door))
    _, r, term, trunc, info = env.step(2)
    assert r == 0.0 and info["opened"] == 0 and info["pos"] == above(door) and not (term or trunc)
    # the key: stepping on it picks it up, it leaves the map and shows in the strip, slot k
    side, act = next(((k_cell[0] + dr, k_cell[1] + dc), a) for a, (dr, dc) in
                     ((2, (-1, 0)), (3, (0, 1)), (0, (1, 0)), (1, (0, -1)))
                     if env.walkable()[k_cell[0] + dr, k_cell[1] + dc] and (k_cell[0] + dr, k_cell[1] + dc) not in env.keys)
    go(side)
    colour_px = lambda f: int((f[4:].reshape(-1, 3) == KEY_COLOURS[k]).all(1).sum())  # noqa: E731  in the view
    before = colour_px(env._draw())
    frame, r, _, _, info = env.step(act)
    assert r == 0.25 and info["held"] == (k,) and k_cell not in env.keys and info["pos"] == k_cell
    assert (frame[0:3, 4 * k : 4 * k + 3] == KEY_COLOURS[k]).all()  # in the strip
    go(side)
    assert colour_px(env._draw()) == before - (env.cell - 2) ** 2  # the same view without the key's square
    # another colour's door stays shut with this key
    go(above(wrong))
    _, r, _, _, info = env.step(2)
    assert r == 0.0 and wrong not in env.opened and info["held"] == (k,) and info["pos"] == above(wrong)
    # its own door opens: reward, key used up (strip empty), the agent stays; then the door can be walked through
    go(above(door))
    frame, r, _, _, info = env.step(2)
    assert r == 2.0 and door in env.opened and info["held"] == () and info["pos"] == above(door)
    assert not frame[0:3].any() and info["opened"] == 1
    rewards = []
    for a, cell in ((2, door), (2, (door[0] + 1, door[1])), (0, door), (0, above(door))):  # into the closet and out
        _, r, _, _, info = env.step(a)
        rewards.append(r)
        assert info["pos"] == cell
    assert rewards == [0.0] * 4  # an opened door pays once


def test_truncation_and_episode_lengths():
    for env in (FourRooms(max_steps=5), MultiDoorsKeys(n_keys=2, max_steps=5)):
        env.reset(seed=0)
        flags = [env.step(1)[2:4] for _ in range(5)]
        assert flags == [(False, False)] * 4 + [(False, True)]
    assert FourRooms().max_steps == 1000 and MultiDoorsKeys().max_steps == 600 and MultiDoorsKeys().n_keys == 7


@pytest.mark.parametrize("cls, kwargs, name", [
    (FourRooms, {"room": 1}, "room"), (FourRooms, {"room": 3.5}, "room"), (FourRooms, {"view": 4}, "view"),
    (FourRooms, {"view": 11}, "view"), (FourRooms, {"objects": -1}, "objects"), (FourRooms, {"max_steps": 0}, "max_steps"),
    (MultiDoorsKeys, {"n_keys": 0}, "n_keys"), (MultiDoorsKeys, {"n_keys": 9}, "n_keys"),
    (MultiDoorsKeys, {"max_steps": -3}, "max_steps"), (MultiDoorsKeys, {"key_reward": float("nan")}, "key_reward"),
    (MultiDoorsKeys, {"door_reward": "1"}, "door_reward"), (MultiDoorsKeys, {"view": True}, "view"),
])
def test_bad_arguments(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"{cls.__name__} {name} must"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [FourRooms, MultiDoorsKeys])
def test_bad_action(cls):
    env = cls()
    env.reset(seed=0)
    for a in (4, -1):
        with pytest.raises(ValueError, match=rf"action {a} is not one of the {cls.__name__}'s moves 0 up, 1 right"):
            env.step(a)


def test_exploration_covers_revisits_and_collects_rewards():
    rooms_eps = explore_episodes("seqrl/FourRooms-v0", 600, seed=1, max_steps=600)
    env = FourRooms(max_steps=600)
    env.reset(seed=1)
    rooms, cells = [], set()
    for a in rooms_eps[0]["act"]:  # replay the dataset's actions: the walker's own run
        env.step(a)
        rooms.append(env.room_of(env.pos))
        cells.add(env.pos)
    seq = [r for r in rooms if r >= 0]
    visits = [seq[0]] + [b for a, b in zip(seq, seq[1:]) if a != b]
    assert set(visits) == {0, 1, 2, 3} and len(visits) >= 8  # all four rooms, each entered again and again
    assert len(cells) > 0.7 * env.walkable().sum()
    eps = explore_episodes("seqrl/MultiDoorsKeys-v0", 400, seed=0, task_prob=0.25, n_keys=3, max_steps=400)
    rew = eps[0]["rew"]
    assert (rew == 0.1).sum() >= 2 and (rew == 1.0).sum() >= 2  # keys picked up and doors opened
    again = explore_episodes("seqrl/MultiDoorsKeys-v0", 400, seed=0, task_prob=0.25, n_keys=3, max_steps=400)
    np.testing.assert_array_equal(again[0]["obs"], eps[0]["obs"])  # the dataset follows the seed
    np.testing.assert_array_equal(again[0]["act"], eps[0]["act"])


def test_collect_through_the_cli_and_one_world_model_update(minari_root):
    from typer.testing import CliRunner

    from seqrl.cli import app
    from seqrl.policies.base import TaskSpec
    from seqrl.policies.world_model import WorldModel
    from seqrl.presets import EnvPreset, load_agent

    runner = CliRunner()
    args = ["collect", "--env", "four-rooms", "--quality", "explore", "--set", "n_steps=90", "--set", "max_steps=45",
            "--set", "seed=3", "--set", "room=4"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    did = res.output.split("dataset ")[1].split(" is at")[0].strip()
    assert did == "seqrl/four-rooms-r4/explore-v0"
    store = load_image_store(did, "seqrl/FourRooms-v0", {"max_steps": 45, "room": 4})
    assert store.observation_space.dtype == np.uint8 and store.observation_space.shape == (32, 32, 3)
    assert store.episode_lengths.tolist() == [45, 45]
    assert runner.invoke(app, args).exit_code == 0  # the same recipe: reused
    said = lambda r: " ".join(r.output.split())  # noqa: E731  the one-line error, however the console wraps it
    bad = runner.invoke(app, args[:-1] + ["room=1"])
    assert bad.exit_code == 2 and "room must be an integer" in said(bad)
    bad = runner.invoke(app, ["collect", "--env", "multi-doors-keys", "--quality", "random"])
    assert bad.exit_code == 2 and "--quality explore" in said(bad)
    bad = runner.invoke(app, ["collect", "--env", "multi-doors-keys", "--quality", "explore", "--set", "colour=1"])
    assert bad.exit_code == 2 and "unknown env argument(s) ['colour']; it takes n_keys" in said(bad)
    bad = runner.invoke(app, ["collect", "--env", "four-rooms", "--quality", "explore", "--set", "n_steps=0"])
    assert bad.exit_code == 2 and "n_steps must be an integer >= 1" in said(bad)

    res = runner.invoke(app, ["collect", "--env", "seqrl/MultiDoorsKeys-v0", "--quality", "explore", "--set",
                              "n_steps=60", "--set", "n_keys=2", "--set", "max_steps=60"])
    assert res.exit_code == 0, res.output
    did = res.output.split("dataset ")[1].split(" is at")[0].strip()
    store = load_image_store(did, "seqrl/MultiDoorsKeys-v0", {"n_keys": 2, "max_steps": 60})
    assert store.observation_space.dtype == np.uint8 and len(store) == 60
    env = EnvPreset(name="mdk", env_id="seqrl/MultiDoorsKeys-v0", max_episode_steps=60,
                    env_kwargs={"n_keys": 2, "max_steps": 60})
    preset = load_agent("s4wm_small", {"policy": {"seq_len": 12}})
    torch.manual_seed(0)
    model = WorldModel(preset.policy, TaskSpec.from_store(store, env))
    batch = model.sample(store, 2, torch.Generator().manual_seed(0))
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (2, 12, 32, 32, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    terms = model.losses(batch)
    loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
    assert torch.isfinite(loss) and loss.item() > 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_task_table_and_kwargs_checks(minari_root):
    assert wm_task("seqrl/FourRooms-v0") is TASKS["four-rooms"] and wm_task("hopper") is None
    assert TASKS["distracting-memory"].dataset_id({"width": 5}) == "seqrl/distracting-memory-w5/random-v0"
    assert TASKS["multi-doors-keys"].dataset_id() == "seqrl/multi-doors-keys-k7/explore-v0"
    with pytest.raises(PresetError, match="n_keys must be an integer"):
        check_env_kwargs("multi-doors-keys", {"n_keys": 20})
    with pytest.raises(PresetError, match="unknown env argument"):
        check_env_kwargs("four-rooms", {"n_keys": 2})
    # distracting-memory through the one builder keeps its id and recipe
    did = build_wm_dataset("distracting-memory", 10, 0, width=2)
    assert did == "seqrl/distracting-memory-w2/random-v0"
    from seqrl.data.minari_io import dataset_recipe

    assert dataset_recipe(did) == {"env_id": "seqrl/DistractingMemory-v0", "n_steps": 10, "seed": 0,
                                   "env_kwargs": {"width": 2, "n_cues": 2, "distractors": 3}, "policy": "uniform random"}
    # the recipe holds the defaults: asking for them by name is the same recipe (reused, no error)
    assert build_wm_dataset("distracting-memory", 10, 0, width=2, distractors=3) == did
    with pytest.raises(PresetError, match="seed must be an integer >= 0"):
        build_wm_dataset("four-rooms", 10, -1)
