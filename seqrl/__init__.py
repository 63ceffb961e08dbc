"""seqrl: reinforcement learning with sequence-model policies, on one data path."""

from seqrl.data.store import Batch, ReplayStore
from seqrl.errors import CheckpointError, DataError, PresetError, SeqrlError
from seqrl.policies.base import TaskSpec
from seqrl.policies.bc import BC
from seqrl.policies.dt import DecisionTransformer
from seqrl.presets import load_agent, load_env
from seqrl.runners.evaluate import RandomPolicy, evaluate
from seqrl.runners.sources import DatasetSource, EnvSource
from seqrl.runners.trainer import Trainer
from seqrl.tokenizer import TrajectoryTokenizer

__version__ = "0.1.0"

__all__ = [
    "BC", "Batch", "CheckpointError", "DataError", "DatasetSource", "DecisionTransformer", "EnvSource", "PresetError",
    "RandomPolicy", "ReplayStore", "SeqrlError", "TaskSpec", "Trainer", "TrajectoryTokenizer", "evaluate",
    "load_agent", "load_env",
]
