"""Dark grid task families for in-context RL: Dark Room and Dark Key-to-Door. "Dark": the agent sees only
its own cell, never the goal, key or door, and must find them from rewards. Task bookkeeping (ids,
splits, the `task` reset option, `info["task"]`) is `seqrl.envs.bandits.TaskEnv`'s.

Both: a `size` x `size` grid; observation the agent's cell (row, col) as `MultiDiscrete([size, size])`;
actions `Discrete(5)`: 0 noop, 1 up (row - 1), 2 down (row + 1), 3 left (col - 1), 4 right (col + 1), as
DPT's five (its code orders them differently, with the noop last); a move into a wall leaves the agent
where it is. Episodes start at `start`, "corner" (cell (0, 0)) or "centre" (cell (size // 2, size // 2)),
and are truncated (a time limit) after `horizon` steps. Rewards are for the cell the step ends in.
The reset option `start` ("uniform" or a cell) starts one episode elsewhere (DPT's random contexts).
`optimal_action(obs)` is a shortest-path action (rows first, then columns; noop on the target), used to
label DPT's query states and by the noise-curriculum demonstrator; `optimal_return()` the best return of
the current task from the start cell.

DarkRoom: reward 1 on every step that ends on the (invisible) goal, 0 elsewhere; nothing terminates.
    A task is a goal cell: task ids index a fixed permutation of the size^2 cells (one per size), the
    first 80% train, the rest test: 80 train and 20 held-out goals on DPT's default 10x10 grid, horizon
    100, start in a corner (Lee et al. 2023, DPT). AD's Dark Room (Laskin et al. 2022, "In-context
    Reinforcement Learning with Algorithm Distillation"): `DarkRoom(size=9, horizon=20, start="centre")`,
    64 train and 17 test goals by the same 80% rule (AD does not publish its split).
KeyToDoor: AD's Dark Key-to-Door, 9x9, horizon 50, start at the centre. Reward 1 the first time the
    agent reaches the (invisible) key, then 1 when it reaches the (invisible) door holding the key,
    which terminates the episode (AD: the reward is 1 for the key once, then 1 for the door once, else 0;
    AD does not say whether the door ends the episode: we end it, as CORL's toy-meta-gym version used
    by Zisman et al. 2024 does, since nothing is left to earn). The door before the key gives nothing.
    The observation is the cell only, as AD's "dark" envs; whether the key is held is in
    `info["has_key"]`, not in the observation. A task is an ordered pair of distinct cells (key, door):
    size^2 (size^2 - 1) tasks (6,480 on 9x9; AD counts 81^2 with key and door allowed to coincide), a
    fixed permutation of them, 80% train and 20% test.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

from seqrl.envs.bandits import TaskEnv
from seqrl.envs.checks import check_action, check_int

Start = Literal["corner", "centre"]
TRAIN_FRACTION = 0.8  # DPT's split: 80 of the 100 goals of the 10x10 room train, 20 are held out

_DARKROOM_SEED = 0x5EED_0D01  # the permutation of cells for each size comes from default_rng([seed, size])
_KEYDOOR_SEED = 0x5EED_0D02
_MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # noop, up, down, left, right as (d row, d col)


def toward(pos: tuple[int, int], target: tuple[int, int]) -> int:
    """A shortest-path action from `pos` to `target` on an open grid: rows first, then columns; noop there."""
    if pos[0] != target[0]:
        return 1 if pos[0] > target[0] else 2
    if pos[1] != target[1]:
        return 3 if pos[1] > target[1] else 4
    return 0


def _distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


class _Grid(TaskEnv):
    """Shared by the two grids: spaces, the start cell, moves, the step counter."""

    def __init__(self, size: int, horizon: int, start: Start, min_size: int):
        name = type(self).__name__
        self.size = check_int(name, "size", size, min_size)
        self.horizon = check_int(name, "horizon", horizon, 1)
        if start not in ("corner", "centre"):
            raise ValueError(f"{name} start must be 'corner' or 'centre', got {start!r}")
        self.start = start
        self.start_cell = (0, 0) if start == "corner" else (self.size // 2, self.size // 2)
        self.observation_space = gym.spaces.MultiDiscrete([self.size, self.size])
        self.action_space = gym.spaces.Discrete(5)
        self._pos = self.start_cell
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """TaskEnv's reset; the option `start` places the agent for this episode: a cell (row, col), or
        "uniform", a cell drawn uniformly from the env's generator (DPT's random transitions)."""
        obs, info = super().reset(seed=seed, options=options)
        where = (options or {}).get("start")
        if where is None:
            return obs, info
        if isinstance(where, str) and where == "uniform":
            where = self._cell(int(self.np_random.integers(self.size * self.size)))
        cell = tuple(np.asarray(where).reshape(-1).tolist())
        if len(cell) != 2 or not all(isinstance(v, int) and 0 <= v < self.size for v in cell):
            raise ValueError(f"{type(self).__name__} reset option start must be 'uniform' or a cell (row, col) "
                             f"inside the {self.size}x{self.size} grid, got {where!r}")
        self._pos = cell
        return self._obs(), info

    def _obs(self) -> np.ndarray:
        return np.array(self._pos, dtype=np.int64)

    def _cell(self, index: int) -> tuple[int, int]:
        return divmod(int(index), self.size)

    def _move(self, action: Any) -> tuple[int, int]:
        dr, dc = _MOVES[check_action(action, 5, "5 moves (noop, up, down, left, right)")]
        last = self.size - 1
        self._pos = (min(max(self._pos[0] + dr, 0), last), min(max(self._pos[1] + dc, 0), last))
        self._t += 1
        return self._pos

    def _cell_of(self, obs: Any) -> tuple[int, int]:
        r, c = (int(v) for v in np.asarray(obs).reshape(2))
        return r, c


class DarkRoom(_Grid):
    def __init__(self, size: int = 10, horizon: int = 100, start: Start = "corner", task: int = 0):
        super().__init__(size, horizon, start, min_size=2)
        n = self.size * self.size
        self._cells = np.random.default_rng([_DARKROOM_SEED, self.size]).permutation(n)  # task id -> goal cell
        self.goal = (0, 0)
        n_train = int(TRAIN_FRACTION * n)
        self._init_tasks(n_train, n - n_train, task)

    def _set_task(self, task: int) -> None:
        self.task = task
        self.goal = self._cell(self._cells[task])

    def _start(self) -> np.ndarray:
        self._pos, self._t = self.start_cell, 0
        return self._obs()

    def _info(self) -> dict[str, Any]:
        return {"task": self.task}

    def step(self, action):
        reward = 1.0 if self._move(action) == self.goal else 0.0
        return self._obs(), reward, False, self._t >= self.horizon, self._info()

    def optimal_action(self, obs: Any) -> int:
        """A shortest-path action toward the goal from the cell `obs` (row, col); noop on the goal."""
        return toward(self._cell_of(obs), self.goal)

    def optimal_return(self) -> float:
        """Reward 1 from the step that reaches the goal to the last (from the goal itself: noop every step)."""
        return float(max(0, self.horizon - max(_distance(self.start_cell, self.goal), 1) + 1))


class KeyToDoor(_Grid):
    def __init__(self, size: int = 9, horizon: int = 50, start: Start = "centre", task: int = 0):
        super().__init__(size, horizon, start, min_size=2)
        n = self.size * self.size
        # task id -> index p of the ordered pair (key, door), key != door: key = p // (n-1), door the
        # (p % (n-1))-th of the other cells
        self._pairs = np.random.default_rng([_KEYDOOR_SEED, self.size]).permutation(n * (n - 1))
        self.key, self.door = (0, 0), (0, 1)
        self.has_key = False
        self._opened = False
        n_train = int(TRAIN_FRACTION * n * (n - 1))
        self._init_tasks(n_train, n * (n - 1) - n_train, task)

    def _set_task(self, task: int) -> None:
        self.task = task
        n = self.size * self.size
        key, other = divmod(int(self._pairs[task]), n - 1)
        self.key, self.door = self._cell(key), self._cell(other + (other >= key))

    def _start(self) -> np.ndarray:
        self._pos, self._t = self.start_cell, 0
        self.has_key = self._opened = False
        return self._obs()

    def _info(self) -> dict[str, Any]:
        return {"task": self.task, "has_key": self.has_key}

    def step(self, action):
        pos = self._move(action)
        reward, terminated = 0.0, False
        if not self.has_key and pos == self.key:
            reward, self.has_key = 1.0, True
        elif self.has_key and not self._opened and pos == self.door:
            reward, terminated, self._opened = 1.0, True, True
        return self._obs(), reward, terminated, self._t >= self.horizon and not terminated, self._info()

    def optimal_action(self, obs: Any, has_key: bool | None = None) -> int:
        """A shortest-path action from the cell `obs` toward the key, or toward the door once the key is
        held (`has_key`; None: whether the agent holds it now). On the key's cell without it (the key
        is the start cell): noop, which picks it up."""
        holding = self.has_key if has_key is None else bool(has_key)
        return toward(self._cell_of(obs), self.door if holding else self.key)

    def optimal_return(self) -> float:
        """2 when the key and then the door can be reached within the horizon (always on AD's 9x9 with 50
        steps), 1 when only the key can, else 0. A key on the start cell takes one step (a noop)."""
        to_key = max(_distance(self.start_cell, self.key), 1)
        return float((to_key <= self.horizon) + (to_key + _distance(self.key, self.door) <= self.horizon))
