"""Gymnasium environments seqrl ships, registered as ``seqrl/...`` when this package is imported
(`seqrl.runners.evaluate` imports it, so the CLI and `evaluate()` can make them by id).

- ``seqrl/TMaze-v0``: remember a cue across a corridor of ``length`` steps (`seqrl.envs.memory.TMaze`).
- ``seqrl/RepeatPrevious-v0``: say the symbol seen ``k`` steps ago (`seqrl.envs.memory.RepeatPrevious`).
- ``seqrl/Count-v0``: ``k`` symbols shown, then say how often a queried one was (`seqrl.envs.memory.Count`).
- ``seqrl/Autoencode-v0``: ``k`` symbols shown, then repeat them in order (`seqrl.envs.memory.Autoencode`).
- ``seqrl/DistractingMemory-v0``: 32x32 RGB frames; a cue colour, a hallway of ``width`` frames with random
  distractors, then doors: reward by the cue (`seqrl.envs.image_memory.DistractingMemory`; world models).
- ``seqrl/FourRooms-v0``: 32x32 RGB partial top-down view of four rooms whose looks are drawn per episode;
  episodes of ``max_steps`` (1000) steps, for long-term frame prediction (`seqrl.envs.gridworlds.FourRooms`).
- ``seqrl/MultiDoorsKeys-v0``: 32x32 RGB partial view; pick up ``n_keys`` coloured keys, open the doors of their
  colours, held keys in a strip; 600 steps (`seqrl.envs.gridworlds.MultiDoorsKeys`).

Task families for in-context RL (a task id fixes the task, ``reset(options={"task": id})`` switches it,
``env.tasks("train")``/``env.tasks("test")`` give a fixed split; `seqrl.envs.bandits`, `seqrl.envs.darkroom`):

- ``seqrl/GaussianBandit-v0``: ``arms`` Gaussian arms, 500 pulls (DPT) (`seqrl.envs.bandits.GaussianBandit`).
- ``seqrl/BernoulliBandit-v0``: the same means, Bernoulli rewards (`seqrl.envs.bandits.BernoulliBandit`).
- ``seqrl/LinearBandit-v0``: arms with features, reward linear in them (`seqrl.envs.bandits.LinearBandit`).
- ``seqrl/DarkRoom-v0``: find an invisible goal; DPT's 10x10 by default, AD's 9x9 by arguments
  (`seqrl.envs.darkroom.DarkRoom`).
- ``seqrl/KeyToDoor-v0``: AD's Dark Key-to-Door, an invisible key then an invisible door
  (`seqrl.envs.darkroom.KeyToDoor`).
"""

from __future__ import annotations

import gymnasium as gym

from seqrl.envs.bandits import BernoulliBandit, GaussianBandit, LinearBandit
from seqrl.envs.darkroom import DarkRoom, KeyToDoor
from seqrl.envs.gridworlds import FourRooms, MultiDoorsKeys
from seqrl.envs.image_memory import DistractingMemory
from seqrl.envs.memory import Autoencode, Count, RepeatPrevious, TMaze

_IDS = {
    "seqrl/TMaze-v0": "seqrl.envs.memory:TMaze",
    "seqrl/RepeatPrevious-v0": "seqrl.envs.memory:RepeatPrevious",
    "seqrl/Count-v0": "seqrl.envs.memory:Count",
    "seqrl/Autoencode-v0": "seqrl.envs.memory:Autoencode",
    "seqrl/DistractingMemory-v0": "seqrl.envs.image_memory:DistractingMemory",
    "seqrl/FourRooms-v0": "seqrl.envs.gridworlds:FourRooms",
    "seqrl/MultiDoorsKeys-v0": "seqrl.envs.gridworlds:MultiDoorsKeys",
    "seqrl/GaussianBandit-v0": "seqrl.envs.bandits:GaussianBandit",
    "seqrl/BernoulliBandit-v0": "seqrl.envs.bandits:BernoulliBandit",
    "seqrl/LinearBandit-v0": "seqrl.envs.bandits:LinearBandit",
    "seqrl/DarkRoom-v0": "seqrl.envs.darkroom:DarkRoom",
    "seqrl/KeyToDoor-v0": "seqrl.envs.darkroom:KeyToDoor",
}

for _id, _entry in _IDS.items():
    if _id not in gym.registry:  # importing twice (reload, subprocess re-import) must not warn
        gym.register(id=_id, entry_point=_entry)

__all__ = ["Autoencode", "BernoulliBandit", "Count", "DarkRoom", "DistractingMemory", "FourRooms", "GaussianBandit", "KeyToDoor", "LinearBandit", "MultiDoorsKeys", "RepeatPrevious", "TMaze"]
