"""Image memory tasks for world models: top-down 32x32 RGB uint8 frames, small enough for a CPU.

DistractingMemory (``seqrl/DistractingMemory-v0``; after S4WM's Distracting Memory, Deng, Park, Ahn 2023,
arXiv:2307.02064, simplified): the first frame shows a cue, a large square of one of `n_cues` colours. Then the
agent walks a hallway of `width` frames: grey walls top and bottom, its position as a white marker that moves one
column group per step (a progress bar along the top row), and `distractors` small squares of random colours
(never a cue colour) at random places, redrawn every step. At the end it sees `n_cues` doors, one of each cue
colour, in a fixed order, and its action picks one: reward +1 if the door's colour is the cue's, -1 otherwise,
and the episode terminates. Actions Discrete(n_cues) (ignored in the hallway). An episode has width + 2 steps:
cue, hallway, doors. A memoryless predictor of the last reward is right half of the time (for a uniformly
random door choice); predicting it needs the cue from width + 1 steps earlier.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.envs.checks import check_int

SIZE = 32
CUE_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 90, 230], [230, 210, 40]], np.uint8)  # red green blue yellow
DISTRACTOR_COLOURS = np.array([[200, 60, 200], [60, 210, 210], [240, 140, 30], [140, 90, 50], [150, 150, 255],
                               [255, 160, 180]], np.uint8)
BACKGROUND, WALL, AGENT = 30, 110, 255


class DistractingMemory(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, width: int = 16, n_cues: int = 2, distractors: int = 3, render_mode: str | None = None):
        self.width = check_int("DistractingMemory", "width", width, 1, 10**6)
        self.n_cues = check_int("DistractingMemory", "n_cues", n_cues, 2, len(CUE_COLOURS))
        self.distractors = check_int("DistractingMemory", "distractors", distractors, 0, 16)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(self.n_cues)
        self._cue, self._t = 0, 0
        self._frame = np.zeros((SIZE, SIZE, 3), np.uint8)

    # frames --------------------------------------------------------------------------------------
    def _draw(self) -> np.ndarray:
        f = np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8)
        f[2:4], f[28:30] = WALL, WALL  # hallway walls
        progress = int(round((SIZE - 2) * self._t / (self.width + 1)))
        f[0:2, : progress + 2] = AGENT  # progress bar: where the agent is along the hallway
        if self._t == 0:  # the cue
            f[8:24, 8:24] = CUE_COLOURS[self._cue]
        elif self._t <= self.width:  # the hallway: the agent and distractors
            for _ in range(self.distractors):
                r, c = self.np_random.integers(4, 24, size=2)
                f[r : r + 4, c : c + 4] = DISTRACTOR_COLOURS[self.np_random.integers(len(DISTRACTOR_COLOURS))]
            f[14:18, 2:6] = AGENT
        else:  # the doors, one per cue colour, left to right
            span = SIZE // self.n_cues
            for i in range(self.n_cues):
                f[10:26, i * span + 2 : (i + 1) * span - 2] = CUE_COLOURS[i]
            f[5:8, 14:18] = AGENT
        return f

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(self.n_cues)), 0
        self._frame = self._draw()
        return self._frame.copy(), {"cue": self._cue}

    def step(self, action):
        if self._t == self.width + 1:  # at the doors: the choice ends the episode
            success = int(action) == self._cue
            return self._frame.copy(), 1.0 if success else -1.0, True, False, {"success": success, "cue": self._cue}
        self._t += 1
        self._frame = self._draw()
        return self._frame.copy(), 0.0, False, False, {"cue": self._cue}

    def render(self):
        return self._frame.copy()
