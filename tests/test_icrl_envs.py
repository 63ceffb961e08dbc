"""The in-context RL task families (seqrl.envs.bandits, seqrl.envs.darkroom): Gymnasium's checker, task ids
and splits, task parameters independent of reset seeds, reward rules, bad inputs."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import seqrl  # noqa: F401  importing seqrl registers the seqrl/... ids
from seqrl.envs import BernoulliBandit, DarkRoom, GaussianBandit, KeyToDoor, LinearBandit

ENVS = [
    lambda: GaussianBandit(),
    lambda: GaussianBandit(arms=3, horizon=7, noise=0.0, task=5),
    lambda: BernoulliBandit(arms=4, horizon=10),
    lambda: LinearBandit(),
    lambda: LinearBandit(dim=5, noise=1.5, protocol="lin2023", task=3),
    lambda: DarkRoom(),
    lambda: DarkRoom(size=9, horizon=20, start="centre", task=60),
    lambda: KeyToDoor(),
    lambda: KeyToDoor(size=3, horizon=4, start="corner"),
]


def params(env):
    """The task parameters of an env, as a tuple of arrays."""
    raw = env.unwrapped
    if isinstance(raw, LinearBandit):
        return raw.means, raw.features, raw.theta
    if isinstance(raw, DarkRoom):
        return (np.array(raw.goal),)
    if isinstance(raw, KeyToDoor):
        return np.array(raw.key), np.array(raw.door)
    return (raw.means,)


@pytest.mark.parametrize("make", ENVS)
def test_gymnasium_env_checker(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings fail the test too
        check_env(make(), skip_render_check=True)


@pytest.mark.parametrize("env_id,kwargs,cls", [
    ("seqrl/GaussianBandit-v0", {"arms": 7}, GaussianBandit),
    ("seqrl/BernoulliBandit-v0", {"horizon": 50}, BernoulliBandit),
    ("seqrl/LinearBandit-v0", {"dim": 5, "protocol": "lin2023"}, LinearBandit),
    ("seqrl/DarkRoom-v0", {"size": 9, "horizon": 20, "start": "centre"}, DarkRoom),
    ("seqrl/KeyToDoor-v0", {"task": 12}, KeyToDoor),
])
def test_registered_with_kwargs(env_id, kwargs, cls):
    env = gym.make(env_id, **kwargs)
    assert type(env.unwrapped) is cls
    for k, v in kwargs.items():
        assert getattr(env.unwrapped, k if k != "task" else "task") == v
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and info["task"] == kwargs.get("task", 0)


@pytest.mark.parametrize("make,n_train,n_test", [
    (lambda: DarkRoom(), 80, 20),  # DPT: 80 goals train, 20 held out
    (lambda: DarkRoom(size=9, horizon=20, start="centre"), 64, 17),
    (lambda: KeyToDoor(), 5184, 1296),  # 81 * 80 ordered (key, door) pairs
    (lambda: GaussianBandit(), 100_000, 200),
    (lambda: LinearBandit(train_tasks=50, test_tasks=7), 50, 7),
])
def test_split_sizes_disjoint_and_fixed(make, n_train, n_test):
    a, b = make(), make()
    train, test = a.tasks("train"), a.tasks("test")
    assert len(train) == n_train and len(test) == n_test
    assert not set(train) & set(test) and sorted(train + test) == list(range(n_train + n_test))
    assert b.tasks("train") == train and b.tasks("test") == test
    for task in (train[0], train[-1], test[0], test[-1]):  # a fresh env derives the same parameters
        a.reset(options={"task": task})
        b.reset(seed=task, options={"task": task})
        for x, y in zip(params(a), params(b)):
            np.testing.assert_array_equal(x, y)


def test_grid_tasks_cover_every_cell_once():
    room = DarkRoom()
    goals = []
    for task in range(room.n_tasks):
        room.reset(options={"task": task})
        goals.append(room.goal)
    assert sorted(goals) == [(r, c) for r in range(10) for c in range(10)]
    held_out = {goals[t] for t in room.tasks("test")}
    assert len(held_out) == 20 and held_out != {(r, c) for r in range(2) for c in range(10)}  # shuffled, not a block
    kd = KeyToDoor(size=3)
    pairs = set()
    for task in range(kd.n_tasks):
        kd.reset(options={"task": task})
        assert kd.key != kd.door
        pairs.add((kd.key, kd.door))
    assert len(pairs) == 9 * 8


@pytest.mark.parametrize("make", ENVS)
def test_task_parameters_ignore_the_reset_seed(make):
    env = make()
    test = env.tasks("test")
    first = [np.copy(p) for p in params(env)]
    env.reset(seed=1, options={"task": test[0]})
    switched = [np.copy(p) for p in params(env)]
    assert any(not np.array_equal(x, y) for x, y in zip(first, switched))  # another task, other parameters
    for seed in (2, 12345):
        obs, info = env.reset(seed=seed, options={"task": test[0]})
        assert info["task"] == test[0]
        for x, y in zip(params(env), switched):
            np.testing.assert_array_equal(x, y)
    env.reset(seed=3)  # no task option: the task stays
    assert env.unwrapped.task == test[0]


def test_reset_seeds_drive_the_reward_noise():
    env = GaussianBandit(task=4)

    def rewards(seed):
        env.reset(seed=seed)
        return [env.step(i % 5)[1] for i in range(20)]

    assert rewards(0) == rewards(0) and rewards(0) != rewards(1)


def test_gaussian_bandit_rules():
    env = GaussianBandit(task=7)
    env.reset(seed=0)
    best = env.optimal_action()
    assert best == int(np.argmax(env.means)) and env.means.min() >= 0 and env.means.max() <= 1
    pulls = {a: [] for a in range(5)}
    for t in range(500):
        a = t % 5
        obs, rew, term, trunc, info = env.step(a)
        pulls[a].append(rew)
        assert obs == 0 and not term and trunc == (t == 499) and info["task"] == 7
        assert info["regret"] == pytest.approx(env.means[best] - env.means[a])
        assert (info["regret"] == 0.0) == (a == best)
    for a, rs in pulls.items():  # 100 pulls of noise 0.3: standard error 0.03
        assert np.mean(rs) == pytest.approx(env.means[a], abs=0.12)
        assert np.std(rs) == pytest.approx(0.3, abs=0.08)


def test_bernoulli_bandit_shares_the_gaussian_means():
    g, b = GaussianBandit(task=11), BernoulliBandit(task=11)
    np.testing.assert_array_equal(g.means, b.means)
    b.reset(seed=0)
    rs = np.array([b.step(2)[1] for _ in range(400)])
    assert set(np.unique(rs)) <= {0.0, 1.0} and rs.mean() == pytest.approx(b.means[2], abs=0.1)


def test_linear_bandit_features_and_theta():
    a, b = LinearBandit(task=0), LinearBandit(task=1)
    assert a.features.shape == (10, 2) and a.theta.shape == (2,)
    np.testing.assert_array_equal(a.features, b.features)  # DPT: features shared, theta per task
    assert not np.array_equal(a.theta, b.theta)
    np.testing.assert_allclose(a.means, a.features @ a.theta)
    c, d = (LinearBandit(dim=5, noise=1.5, protocol="lin2023", task=t) for t in (0, 1))
    assert c.features.shape == (10, 5) and not np.array_equal(c.features, d.features)  # Lin et al.: per task
    assert np.all(np.abs(c.features) <= 1) and np.all((c.theta >= 0) & (c.theta <= 1))
    c.reset(seed=0)
    rs = [c.step(3)[1] for _ in range(200)]
    assert np.mean(rs) == pytest.approx(c.means[3], abs=0.45) and np.std(rs) == pytest.approx(1.5, abs=0.3)
    _, _, _, _, info = c.step(c.optimal_action())
    assert info["regret"] == 0.0


def walk(env, obs, steps, action=None):
    """`steps` steps of `action` (None: the env's optimal action); the rewards."""
    out = []
    for _ in range(steps):
        obs, rew, term, trunc, info = env.step(env.optimal_action(obs) if action is None else action)
        out.append(rew)
    return obs, out


def test_dark_room_rewards_every_step_on_the_goal():
    env = DarkRoom(size=9, horizon=20, start="centre")
    for task in env.tasks("test"):
        obs, _ = env.reset(options={"task": task})
        assert tuple(obs) == (4, 4)
        d = abs(env.goal[0] - 4) + abs(env.goal[1] - 4)
        if d == 0:
            continue
        obs, rews = walk(env, obs, d)
        assert rews == [0.0] * (d - 1) + [1.0] and tuple(obs) == env.goal
        obs, rews = walk(env, obs, 20 - d - 1, action=0)  # standing on the goal: 1 on every step
        assert rews == [1.0] * (20 - d - 1)
        _, rew, term, trunc, info = env.step(0)
        assert rew == 1.0 and not term and trunc and info == {"task": task}
        assert env.optimal_return() == 20 - d + 1
    obs, _ = env.reset(options={"task": 0})
    for t in range(20):  # up into the wall: the agent stays in the room, in its column
        obs, *_ = env.step(1)
        assert tuple(obs) == (max(3 - t, 0), 4)


def test_dark_room_corner_start_and_goal_on_start():
    env = DarkRoom()
    obs, _ = env.reset(seed=0)
    assert tuple(obs) == (0, 0)
    task = next(t for t in range(100) if DarkRoom(task=t).goal == (0, 0))
    env.reset(options={"task": task})
    obs, rews = walk(env, obs, 100)
    assert rews == [1.0] * 100 and env.optimal_return() == 100.0


def test_start_option_places_the_agent_for_one_episode():
    env = DarkRoom(task=3)
    obs, _ = env.reset(options={"start": (4, 7)})
    assert obs.tolist() == [4, 7] and env.step(4)[0].tolist() == [4, 8]
    assert env.reset()[0].tolist() == [0, 0]  # the next episode starts at the env's start cell again
    cells = {tuple(env.reset(seed=0 if i == 0 else None, options={"start": "uniform"})[0]) for i in range(2000)}
    assert len(cells) == 100  # every cell of the 10x10 room
    a = [env.reset(seed=5, options={"start": "uniform"})[0].tolist() for _ in range(2)]
    assert a[0] == a[1]  # drawn from the env's seeded generator
    for bad in ((10, 0), (1, 2, 3), "random"):
        with pytest.raises(ValueError, match="start must be 'uniform' or a cell"):
            env.reset(options={"start": bad})


def test_key_then_door():
    env = KeyToDoor()

    def key_off_the_way(t):  # the way to the door (along column 4, then along the door's row) misses the key
        kd = KeyToDoor(task=t)
        return kd.key[1] != 4 and kd.key[0] != kd.door[0] and kd.door != (4, 4)

    task = next(t for t in env.tasks("train") if key_off_the_way(t))
    obs, info = env.reset(seed=0, options={"task": task})
    assert not info["has_key"] and env.optimal_return() == 2.0
    door, key = env.door, env.key
    while tuple(obs) != door:  # the door first: nothing, the episode goes on
        obs, rew, term, _, info = env.step(env.optimal_action(obs, has_key=True))
        assert rew == 0.0 and not term and not info["has_key"]
    while not env.has_key:
        obs, rew, term, _, info = env.step(env.optimal_action(obs))
        assert not term
    assert info["has_key"] and rew == 1.0 and tuple(obs) == key
    steps = 0
    while True:
        obs, rew, term, trunc, info = env.step(env.optimal_action(obs))
        steps += 1
        if term:
            break
        assert rew == 0.0
    assert rew == 1.0 and tuple(obs) == door and not trunc and steps == abs(key[0] - door[0]) + abs(key[1] - door[1])


def test_key_to_door_optimal_play_and_time_limit():
    env = KeyToDoor(size=9, horizon=50)
    for task in env.tasks("test")[:40]:
        obs, _ = env.reset(options={"task": task})
        total, term, trunc = 0.0, False, False
        while not (term or trunc):
            obs, rew, term, trunc, _ = env.step(env.optimal_action(obs))
            total += rew
        assert term and total == 2.0 == env.optimal_return()
    env.reset(options={"task": 0})
    for t in range(50):  # standing still: the key only if it is the start cell; truncated at 50
        _, rew, term, trunc, _ = env.step(0)
        assert not term and trunc == (t == 49)


@pytest.mark.parametrize("make,message", [
    (lambda: DarkRoom(task=100), "task 100 is not a task of DarkRoom"),
    (lambda: DarkRoom().reset(options={"task": -1}), "task -1 is not a task of DarkRoom"),
    (lambda: KeyToDoor(task=6480), "task 6480 is not a task of KeyToDoor"),
    (lambda: GaussianBandit(test_tasks=5).reset(options={"task": 100_005}), "task 100005 is not a task"),
    (lambda: GaussianBandit().step(7), "action 7 is not one of the 5 arms"),
    (lambda: LinearBandit().step(-1), "action -1 is not one of the 10 arms"),
    (lambda: DarkRoom().step(5), "action 5 is not one of the 5 moves"),
    (lambda: DarkRoom(size=0), "DarkRoom size must be an integer >= 2, got 0"),
    (lambda: KeyToDoor(horizon=0), "KeyToDoor horizon must be an integer >= 1, got 0"),
    (lambda: GaussianBandit(horizon=-3), "GaussianBandit horizon must be an integer >= 1, got -3"),
    (lambda: BernoulliBandit(arms=1), "BernoulliBandit arms must be an integer >= 2, got 1"),
    (lambda: GaussianBandit(noise=-0.1), "GaussianBandit noise must be a finite number >= 0"),
    (lambda: LinearBandit(dim=0), "LinearBandit dim must be an integer >= 1, got 0"),
    (lambda: LinearBandit(protocol="lee"), "protocol must be 'dpt' or 'lin2023', got 'lee'"),
    (lambda: DarkRoom(start="middle"), "start must be 'corner' or 'centre', got 'middle'"),
    (lambda: DarkRoom().tasks("val"), "split must be 'train' or 'test', got 'val'"),
    (lambda: gym.make("seqrl/DarkRoom-v0", size=2.5), "size must be an integer >= 2, got 2.5"),
])
def test_bad_input_names_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()
