from seqrl.runners.evaluate import RandomPolicy, evaluate
from seqrl.runners.offline import OfflineRunner

__all__ = ["OfflineRunner", "RandomPolicy", "evaluate"]
