from seqrl.runners.evaluate import RandomPolicy, evaluate
from seqrl.runners.sources import DatasetSource, EnvSource
from seqrl.runners.trainer import Trainer

__all__ = ["DatasetSource", "EnvSource", "RandomPolicy", "Trainer", "evaluate"]
