"""LSTM and GRU backbones with the backbone contract (`forward`, `step`, `initial_state`, `reset`): the
LSTM is the memory of the in-house recurrent PPO baseline (`lstm_ppo`), the GRU the recurrent model of the
RSSM world model (`policies/world_model.py` with `backbone = "gru"`, DreamerV3's deterministic path).

Dimension letters: B batch (or envs), T steps in a segment, d width, L layers.

A segment without episode starts after its first step runs through `nn.LSTM`/`nn.GRU` in one call (cuDNN on
CUDA). A segment with resets inside is cut into its episodes, which run together in one call as a packed
batch (`nn.utils.rnn.pack_padded_sequence`): each piece after a reset starts from the zero state, the first
piece of a row from the given state. CleanRL's LSTM PPO loops over the steps instead, zeroing the state where
an episode starts; the result is the same (tests/test_backbones.py checks both paths against repeated `step`
calls), in one call instead of T, which is what RL's short episodes (many resets per sequence) need. The GRU's
weights are orthogonal and its biases zero (CleanRL's init); the LSTM keeps PyTorch's init, as sb3-contrib's
RecurrentPPO does: with CleanRL's, `lstm_ppo` scored the same or lower on the memory tasks (docs/results.md,
"Online: memory tasks beyond the T-maze"). DreamerV3's GRU adds a LayerNorm inside the cell and an
update-gate bias of -1; this is PyTorch's plain GRU (our choice: cuDNN, and one less custom cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from seqrl.nn import index_state


@dataclass
class LSTMState:
    h: torch.Tensor  # (B, L, d) hidden state per layer (batch first, as every seqrl state)
    c: torch.Tensor  # (B, L, d) cell state per layer


@dataclass
class GRUState:
    h: torch.Tensor  # (B, L, d) hidden state per layer


class _Recurrent(nn.Module):
    """What the LSTM and the GRU share: their init, and forward/step over the subclass's `_run`."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers

    def _make(self, module: type[nn.RNNBase], orthogonal: bool) -> nn.RNNBase:
        rnn = module(self.d_model, self.d_model, self.n_layers, batch_first=True)
        if orthogonal:
            for name, p in rnn.named_parameters():
                nn.init.orthogonal_(p) if "weight" in name else nn.init.zeros_(p)
        return rnn

    def _zeros(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(batch, self.n_layers, self.d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state=None, reset: torch.Tensor | None = None):
        """x (B, T, d) -> y (B, T, d); reset (B, T) bool: a new episode starts at that step."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        if reset is not None and x.shape[1]:
            state = self.reset(state, reset[:, 0])
        if reset is None or not bool(reset[:, 1:].any()):
            return self._run(x, state)
        return self._episodes(x, state, reset)

    def _episodes(self, x: torch.Tensor, state, reset: torch.Tensor):
        """forward with resets inside: the P pieces between resets, packed, through one `_run`."""
        B, T, d = x.shape
        start = reset.clone()
        start[:, 0] = True
        flat = start.flatten()
        first = flat.nonzero()[:, 0]  # (P,) flat index of each piece's first step, row by row
        piece = flat.long().cumsum(0) - 1  # (B*T,) the piece of each step
        pos = torch.arange(B * T, device=x.device) - first[piece]  # its place in the piece
        lengths = torch.diff(first, append=first.new_tensor([B * T])).cpu()
        padded = x.new_zeros(len(first), int(lengths.max()), d)
        padded[piece, pos] = x.flatten(0, 1)
        # a piece at the start of a row continues that row's state; the others start from zeros
        init = self.reset(index_state(state, first // T), first % T != 0)
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        y, final = self._run(packed, init)
        y = nn.utils.rnn.pad_packed_sequence(y, batch_first=True)[0][piece, pos].view(B, T, -1)
        return y, index_state(final, piece.view(B, T)[:, -1])  # the state after each row's last piece

    def step(self, x: torch.Tensor, state):
        """x (B, d) -> y (B, d)."""
        y, state = self._run(x[:, None], state)
        return y[:, 0], state


class LSTM(_Recurrent):
    def __init__(self, d_model: int, n_layers: int = 1):
        super().__init__(d_model, n_layers)
        # PyTorch's init, as sb3-contrib's RecurrentPPO (CleanRL's orthogonal one scored lower: module docstring)
        self.lstm = self._make(nn.LSTM, orthogonal=False)  # the attribute names the weights in checkpoints: lstm.*

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LSTMState:
        return LSTMState(self._zeros(batch, device, dtype), self._zeros(batch, device, dtype))

    @staticmethod
    def reset(state: LSTMState, done: torch.Tensor) -> LSTMState:
        """Zero the state of the envs where `done` (B,) is True."""
        keep = (~done).to(state.h.dtype)[:, None, None]
        return LSTMState(state.h * keep, state.c * keep)

    def _run(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        hc = (state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous())  # (L, B, d) for nn.LSTM
        y, (h, c) = self.lstm(x, hc)
        return y, LSTMState(h.transpose(0, 1), c.transpose(0, 1))


class GRU(_Recurrent):
    def __init__(self, d_model: int, n_layers: int = 1):
        super().__init__(d_model, n_layers)
        self.gru = self._make(nn.GRU, orthogonal=True)

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> GRUState:
        return GRUState(self._zeros(batch, device, dtype))

    @staticmethod
    def reset(state: GRUState, done: torch.Tensor) -> GRUState:
        """Zero the state of the envs where `done` (B,) is True."""
        return GRUState(state.h * (~done).to(state.h.dtype)[:, None, None])

    def _run(self, x: torch.Tensor, state: GRUState) -> tuple[torch.Tensor, GRUState]:
        y, h = self.gru(x, state.h.transpose(0, 1).contiguous())  # h (L, B, d) for nn.GRU
        return y, GRUState(h.transpose(0, 1))
