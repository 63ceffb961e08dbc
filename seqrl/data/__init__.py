from seqrl.data.store import Batch, ReplayStore

__all__ = ["Batch", "ReplayStore"]
