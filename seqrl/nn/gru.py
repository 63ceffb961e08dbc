"""GRU backbone with the backbone contract (`forward`, `step`, `initial_state`, `reset`): the recurrent model
of the RSSM world model (`policies/world_model.py` with `backbone = "gru"`, DreamerV3's deterministic path).

Dimension letters: B batch (or envs), T steps in a segment, d width, L layers.

A segment without episode starts after its first step runs through `nn.GRU` in one call (cuDNN on CUDA); a
segment with resets inside runs step by step, zeroing the state of an env where its new episode starts (as
lstm.py). Both paths give the same numbers as repeated `step` calls. DreamerV3's GRU adds a LayerNorm inside the
cell and an update-gate bias of -1; this is PyTorch's plain GRU (our choice: cuDNN, and one less custom cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class GRUState:
    h: torch.Tensor  # (B, L, d) hidden state per layer (batch first, as every seqrl state)


class GRU(nn.Module):
    def __init__(self, d_model: int, n_layers: int = 1):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.gru = nn.GRU(d_model, d_model, n_layers, batch_first=True)
        for name, p in self.gru.named_parameters():  # orthogonal weights, zero biases (as lstm.py)
            nn.init.orthogonal_(p) if "weight" in name else nn.init.zeros_(p)

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> GRUState:
        return GRUState(torch.zeros(batch, self.n_layers, self.d_model, device=device, dtype=dtype))

    @staticmethod
    def reset(state: GRUState, done: torch.Tensor) -> GRUState:
        """Zero the state of the envs where `done` (B,) is True."""
        return GRUState(state.h * (~done).to(state.h.dtype)[:, None, None])

    def _run(self, x: torch.Tensor, state: GRUState) -> tuple[torch.Tensor, GRUState]:
        y, h = self.gru(x, state.h.transpose(0, 1).contiguous())  # h (L, B, d) for nn.GRU
        return y, GRUState(h.transpose(0, 1))

    def forward(self, x: torch.Tensor, state: GRUState | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, GRUState]:
        """x (B, T, d) -> y (B, T, d); reset (B, T) bool: a new episode starts at that step."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        if reset is not None and x.shape[1]:
            state = self.reset(state, reset[:, 0])
        if reset is None or not bool(reset[:, 1:].any()):
            return self._run(x, state)
        ys = []
        for t in range(x.shape[1]):
            state = self.reset(state, reset[:, t])
            y, state = self._run(x[:, t : t + 1], state)
            ys.append(y)
        return torch.cat(ys, 1), state

    def step(self, x: torch.Tensor, state: GRUState) -> tuple[torch.Tensor, GRUState]:
        """x (B, d) -> y (B, d)."""
        y, state = self._run(x[:, None], state)
        return y[:, 0], state
