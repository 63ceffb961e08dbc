"""`nn.LayerNorm` and `nn.RMSNorm` (same parameters, initialisation and state-dict keys, so checkpoints move between
them) whose forward runs `seqrl.kernels.norm`: Triton kernels on CUDA, PyTorch's on the CPU. Affine only."""

from __future__ import annotations

import torch
from torch import nn

from seqrl.kernels import norm


class LayerNorm(nn.LayerNorm):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    def __init__(self, d: int, eps: float | None = None):
        super().__init__(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm.rms_norm(x, self.weight, self.eps)
