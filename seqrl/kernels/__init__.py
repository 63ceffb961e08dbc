"""Linear-recurrence kernels: `seqrl.kernels.scan` is the entry point (Triton on CUDA, chunked PyTorch elsewhere)."""

from seqrl.kernels.scan import linear_scan, selective_scan, selective_step

__all__ = ["linear_scan", "selective_scan", "selective_step"]
