"""Linear-recurrence kernels: `seqrl.kernels.scan` is the entry point (Triton on CUDA, chunked PyTorch elsewhere)."""

from seqrl.kernels.scan import (KernelFallbackWarning, kernel_status, linear_scan, linear_step, selective_scan,
                                selective_step)

__all__ = ["KernelFallbackWarning", "kernel_status", "linear_scan", "linear_step", "selective_scan", "selective_step"]
