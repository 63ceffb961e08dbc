"""Gymnasium environments seqrl ships, registered as ``seqrl/...`` when this package is imported
(`seqrl.runners.evaluate` imports it, so the CLI and `evaluate()` can make them by id).

- ``seqrl/TMaze-v0``: remember a cue across a corridor of ``length`` steps (`seqrl.envs.memory.TMaze`).
- ``seqrl/RepeatPrevious-v0``: say the symbol seen ``k`` steps ago (`seqrl.envs.memory.RepeatPrevious`).
"""

from __future__ import annotations

import gymnasium as gym

from seqrl.envs.memory import RepeatPrevious, TMaze

_IDS = {"seqrl/TMaze-v0": "seqrl.envs.memory:TMaze", "seqrl/RepeatPrevious-v0": "seqrl.envs.memory:RepeatPrevious"}

for _id, _entry in _IDS.items():
    if _id not in gym.registry:  # importing twice (reload, subprocess re-import) must not warn
        gym.register(id=_id, entry_point=_entry)

__all__ = ["RepeatPrevious", "TMaze"]
