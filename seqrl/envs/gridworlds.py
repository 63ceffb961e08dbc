"""Grid worlds seen through a partial top-down view, for world models: 32x32 RGB uint8 frames.

Both tasks are after the long-term memory tests of S4WM (Deng, Park, Ahn 2023, arXiv:2307.02064), simplified and
drawn our own way. The agent moves on a grid of cells with 4 actions (0 up, 1 right, 2 down, 3 left; a move into a
wall leaves it where it is) and sees only `view` x `view` cells around itself, the agent always in the centre
cell (a white square); cells outside the map are black. A cell is `(32 - strip) // view` pixels wide (4 for the
default view of 7), the view centred in the frame below a strip of `strip` rows. What the map looks like is drawn
at random at every reset, so a world model that predicts the frames when the agent comes back to a place must
have kept them from when it was there, not in its weights. Episodes never terminate; they are truncated after
`max_steps` steps. Everything is a function of the reset seed and the actions.

FourRooms (``seqrl/FourRooms-v0``): four rooms of `room` x `room` cells in a square, joined by four doorways (one
in each inner wall segment, at a random place). Each episode draws a different floor colour for every room (4 of
8), and `objects` small squares of random colours on random cells of each room (decoration: the agent walks over
them). Reward 0 always: the task is frame prediction, e.g. 500 steps of context, then 500 imagined.

MultiDoorsKeys (``seqrl/MultiDoorsKeys-v0``): a hall of 5 x max(3 n_keys - 1, 8) cells; below it, behind a wall,
`n_keys` closets of 2 x 2 cells, each closed by a door of one key colour (a random order), and `n_keys` keys, one
of each colour, on random cells of the hall. Stepping on a key picks it up (`key_reward`): it leaves the map and
shows in the strip at the top of the frame, slot i for colour i. Walking into a door with its key opens it
(`door_reward`; the key is used up, the agent stays in front of it); without the key the door is a wall. An open
door is a dark cell of its colour that can be walked through. Hall and closet floors take random colours per
episode. Defaults: 7 keys (S4WM's hardest level) and episodes of 600 steps.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.envs.checks import check_action, check_int

SIZE = 32
WALL = np.array([110, 110, 110], np.uint8)
DOORWAY = np.array([170, 170, 170], np.uint8)
AGENT = np.array([255, 255, 255], np.uint8)
OUTSIDE = np.array([0, 0, 0], np.uint8)
FLOOR_COLOURS = np.array([[60, 30, 30], [30, 60, 30], [30, 30, 70], [70, 60, 20], [60, 25, 60], [20, 60, 65],
                          [45, 45, 45], [80, 45, 20]], np.uint8)  # dark: objects, keys and the agent stand out
OBJECT_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 90, 230], [230, 210, 40], [200, 60, 200],
                           [60, 210, 210], [240, 140, 30], [150, 150, 255]], np.uint8)
KEY_COLOURS = OBJECT_COLOURS  # key i and door i share colour i
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left


def _check_view(env: str, view: Any) -> int:
    view = check_int(env, "view", view, 3, 9)
    if view % 2 == 0:
        raise ValueError(f"{env} view must be odd (the agent sits in the centre cell), got {view}")
    return view


class _GridWorld(gym.Env):
    """The map (base colour and wall per cell, an optional inner square per cell), the agent, moves and the view.
    Subclasses build the map in `_build` and react to `_enter` (a cell walked onto) and `_bump` (a blocked move)."""

    metadata = {"render_modes": ["rgb_array"]}
    strip = 0  # rows at the top of the frame not taken by the view

    def __init__(self, view: int, max_steps: int, render_mode: str | None):
        name = type(self).__name__
        self.view = _check_view(name, view)
        self.max_steps = check_int(name, "max_steps", max_steps, 1, 10**8)
        self.render_mode = render_mode
        self.cell = (SIZE - self.strip) // self.view
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        inner = np.zeros((self.cell, self.cell), bool)
        inner[1 : self.cell - 1, 1 : self.cell - 1] = True  # the inner square of a cell: objects, keys, the agent
        self._inner = np.tile(inner, (self.view, self.view))
        self._t = 0
        self._pos = np.zeros(2, np.int64)
        self._wall = np.zeros((1, 1), bool)
        self._base = np.zeros((1, 1, 3), np.uint8)
        self._mark = np.zeros((1, 1, 3), np.uint8)
        self._marked = np.zeros((1, 1), bool)
        self._frame = np.zeros((SIZE, SIZE, 3), np.uint8)

    # map ------------------------------------------------------------------------------------------
    def walkable(self) -> np.ndarray:
        """(rows, cols) bool: the cells the agent can stand on now."""
        return ~self._wall

    @property
    def pos(self) -> tuple[int, int]:
        return int(self._pos[0]), int(self._pos[1])

    def _build(self) -> None:
        raise NotImplementedError

    def _enter(self, cell: tuple[int, int]) -> float:
        return 0.0

    def _bump(self, cell: tuple[int, int]) -> float:
        return 0.0

    def _info(self) -> dict[str, Any]:
        return {"pos": self.pos}

    # frames ---------------------------------------------------------------------------------------
    def _draw(self) -> np.ndarray:
        v, c, half = self.view, self.cell, self.view // 2
        rows, cols = self._wall.shape
        base = np.broadcast_to(OUTSIDE, (v, v, 3)).copy()
        mark = np.zeros((v, v, 3), np.uint8)
        marked = np.zeros((v, v), bool)
        r0, c0 = self._pos[0] - half, self._pos[1] - half
        rs, re, cs, ce = max(r0, 0), min(r0 + v, rows), max(c0, 0), min(c0 + v, cols)
        dst = (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))
        base[dst], mark[dst], marked[dst] = self._base[rs:re, cs:ce], self._mark[rs:re, cs:ce], self._marked[rs:re, cs:ce]
        marked[half, half], mark[half, half] = True, AGENT
        up = lambda a: a.repeat(c, 0).repeat(c, 1)  # noqa: E731  cells to pixels
        view = np.where((up(marked) & self._inner)[..., None], up(mark), up(base))
        f = np.zeros((SIZE, SIZE, 3), np.uint8)
        top, left = self.strip + (SIZE - self.strip - v * c) // 2, (SIZE - v * c) // 2
        f[top : top + v * c, left : left + v * c] = view
        self._draw_strip(f)
        return f

    def _draw_strip(self, f: np.ndarray) -> None:
        pass

    # gym ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._build()
        self._frame = self._draw()
        return self._frame.copy(), self._info()

    def step(self, action):
        a = check_action(action, 4, f"{type(self).__name__}'s moves 0 up, 1 right, 2 down, 3 left")
        nxt = self._pos + MOVES[a]
        cell = (int(nxt[0]), int(nxt[1]))
        inside = 0 <= cell[0] < self._wall.shape[0] and 0 <= cell[1] < self._wall.shape[1]
        if inside and self.walkable()[cell]:
            self._pos = nxt
            reward = self._enter(cell)
        else:
            reward = self._bump(cell) if inside else 0.0
        self._t += 1
        self._frame = self._draw()
        return self._frame.copy(), float(reward), False, self._t >= self.max_steps, self._info()

    def render(self):
        return self._frame.copy()


class FourRooms(_GridWorld):
    def __init__(self, room: int = 7, view: int = 7, objects: int = 2, max_steps: int = 1000,
                 render_mode: str | None = None):
        self.room = check_int("FourRooms", "room", room, 2, 64)
        self.objects = check_int("FourRooms", "objects", objects, 0, self.room * self.room)
        super().__init__(view, max_steps, render_mode)
        self.floors = np.zeros(4, np.int64)
        self.doorways: list[tuple[int, int]] = []

    def room_of(self, cell: tuple[int, int]) -> int:
        """0 top left, 1 top right, 2 bottom left, 3 bottom right; -1 for walls and doorways."""
        mid = self.room + 1
        r, c = cell
        if self._wall[r, c] or r == mid or c == mid:
            return -1
        return 2 * int(r > mid) + int(c > mid)

    def _build(self) -> None:
        rng, n, mid = self.np_random, 2 * self.room + 3, self.room + 1
        wall = np.zeros((n, n), bool)
        wall[[0, mid, n - 1], :] = True
        wall[:, [0, mid, n - 1]] = True
        lo, hi = rng.integers(1, mid, size=2), rng.integers(mid + 1, n - 1, size=2)
        self.doorways = [(int(lo[0]), mid), (int(hi[0]), mid), (mid, int(lo[1])), (mid, int(hi[1]))]
        base = np.broadcast_to(WALL, (n, n, 3)).copy()
        self.floors = rng.choice(len(FLOOR_COLOURS), size=4, replace=False)
        self._mark, self._marked = np.zeros((n, n, 3), np.uint8), np.zeros((n, n), bool)
        cells = [[] for _ in range(4)]
        self._wall = wall
        for r in range(n):
            for c in range(n):
                k = self.room_of((r, c))
                if k >= 0:
                    base[r, c] = FLOOR_COLOURS[self.floors[k]]
                    cells[k].append((r, c))
        for d in self.doorways:
            wall[d] = False
            base[d] = DOORWAY
        for k in range(4):
            for i in rng.choice(len(cells[k]), size=self.objects, replace=False):
                self._marked[cells[k][i]] = True
                self._mark[cells[k][i]] = OBJECT_COLOURS[rng.integers(len(OBJECT_COLOURS))]
        self._base = base
        start = cells[int(rng.integers(4))]
        self._pos = np.array(start[int(rng.integers(len(start)))], np.int64)

    def _info(self) -> dict[str, Any]:
        return {"pos": self.pos, "room": self.room_of(self.pos)}


class MultiDoorsKeys(_GridWorld):
    strip = 4
    hall_rows = 5

    def __init__(self, n_keys: int = 7, view: int = 7, max_steps: int = 600, key_reward: float = 0.1,
                 door_reward: float = 1.0, render_mode: str | None = None):
        self.n_keys = check_int("MultiDoorsKeys", "n_keys", n_keys, 1, len(KEY_COLOURS))
        for name, v in (("key_reward", key_reward), ("door_reward", door_reward)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
                raise ValueError(f"MultiDoorsKeys {name} must be a finite number, got {v!r}")
        self.key_reward, self.door_reward = float(key_reward), float(door_reward)
        super().__init__(view, max_steps, render_mode)
        self.keys: dict[tuple[int, int], int] = {}  # cell -> colour, keys still on the map
        self.doors: dict[tuple[int, int], int] = {}  # cell -> colour, all doors
        self.opened: set[tuple[int, int]] = set()
        self.held: set[int] = set()

    def walkable(self) -> np.ndarray:
        ok = ~self._wall
        for d in self.opened:
            ok[d] = True
        return ok

    def _build(self) -> None:
        rng, n, h = self.np_random, self.n_keys, self.hall_rows
        width = max(3 * n - 1, 8)
        rows, cols = h + 5, width + 2  # wall, hall, wall with doors, closets (2 rows), wall
        wall = np.ones((rows, cols), bool)
        wall[1 : h + 1, 1 : width + 1] = False
        floors = rng.choice(len(FLOOR_COLOURS), size=2, replace=False)
        base = np.broadcast_to(WALL, (rows, cols, 3)).copy()
        base[1 : h + 1, 1 : width + 1] = FLOOR_COLOURS[floors[0]]
        first = 1 + (width - (3 * n - 1)) // 2
        colours = rng.permutation(n)
        self.doors, self.opened, self.held = {}, set(), set()
        for i in range(n):
            c = first + 3 * i
            wall[h + 2 : h + 4, c : c + 2] = False
            base[h + 2 : h + 4, c : c + 2] = FLOOR_COLOURS[floors[1]]
            door = (h + 1, c + int(rng.integers(2)))
            self.doors[door] = int(colours[i])
            base[door] = KEY_COLOURS[colours[i]]
        self._wall, self._base = wall, base
        self._mark, self._marked = np.zeros((rows, cols, 3), np.uint8), np.zeros((rows, cols), bool)
        for d in self.doors:  # a closed door: its colour with a black lock in the middle
            self._marked[d] = True
        hall = [(r, c) for r in range(1, h + 1) for c in range(1, width + 1)]
        picks = rng.choice(len(hall), size=n + 1, replace=False)
        self._pos = np.array(hall[picks[0]], np.int64)
        self.keys = {hall[p]: k for k, p in enumerate(picks[1:])}
        for cell, k in self.keys.items():
            self._marked[cell], self._mark[cell] = True, KEY_COLOURS[k]

    def _enter(self, cell: tuple[int, int]) -> float:
        if cell in self.keys:
            self.held.add(self.keys.pop(cell))
            self._marked[cell] = False
            return self.key_reward
        return 0.0

    def _bump(self, cell: tuple[int, int]) -> float:
        k = self.doors.get(cell)
        if k is None or cell in self.opened or k not in self.held:
            return 0.0
        self.held.discard(k)
        self.opened.add(cell)
        self._marked[cell] = False
        self._base[cell] = KEY_COLOURS[k] // 3
        return self.door_reward

    def _draw_strip(self, f: np.ndarray) -> None:
        for k in self.held:
            f[0:3, 4 * k : 4 * k + 3] = KEY_COLOURS[k]

    def _info(self) -> dict[str, Any]:
        return {"pos": self.pos, "held": tuple(sorted(self.held)), "opened": len(self.opened)}
