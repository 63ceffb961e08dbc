"""LSTM backbone with the backbone contract (`forward`, `step`, `initial_state`, `reset`): the memory of
the in-house recurrent PPO baseline (`lstm_ppo`).

Dimension letters: B batch (or envs), T steps in a segment, d width, L layers.

A segment without episode starts inside it runs through `nn.LSTM` in one call (cuDNN on CUDA); a
segment with resets runs step by step, zeroing the state of an env where its new episode starts (as
CleanRL's LSTM PPO does). Both paths give the same numbers as repeated `step` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LSTMState:
    h: torch.Tensor  # (B, L, d) hidden state per layer (batch first, as every seqrl state)
    c: torch.Tensor  # (B, L, d) cell state per layer


class LSTM(nn.Module):
    def __init__(self, d_model: int, n_layers: int = 1):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.lstm = nn.LSTM(d_model, d_model, n_layers, batch_first=True)
        for name, p in self.lstm.named_parameters():  # CleanRL's LSTM init: orthogonal weights, zero biases
            nn.init.orthogonal_(p) if "weight" in name else nn.init.zeros_(p)

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LSTMState:
        z = torch.zeros(batch, self.n_layers, self.d_model, device=device, dtype=dtype)
        return LSTMState(z, z.clone())

    @staticmethod
    def reset(state: LSTMState, done: torch.Tensor) -> LSTMState:
        """Zero the state of the envs where `done` (B,) is True."""
        keep = (~done).to(state.h.dtype)[:, None, None]
        return LSTMState(state.h * keep, state.c * keep)

    def _run(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        hc = (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous())  # (L, B, d) for nn.LSTM
        y, (h, c) = self.lstm(x, hc)
        return y, LSTMState(h.transpose(0, 1), c.transpose(0, 1))

    def forward(self, x: torch.Tensor, state: LSTMState | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, LSTMState]:
        """x (B, T, d) -> y (B, T, d); reset (B, T) bool: a new episode starts at that step."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        if reset is None or not bool(reset.any()):
            return self._run(x, state)
        ys = []
        for t in range(x.shape[1]):
            state = self.reset(state, reset[:, t])
            y, state = self._run(x[:, t : t + 1], state)
            ys.append(y)
        return torch.cat(ys, 1), state

    def step(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """x (B, d) -> y (B, d)."""
        y, state = self._run(x[:, None], state)
        return y[:, 0], state
