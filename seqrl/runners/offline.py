"""OfflineRunner: the training loop every offline policy shares (DT, BC; DM, DPT, AD later).

It knows optimisers, schedules, devices, DDP, TensorBoard, checkpoints and evaluation, and nothing of
any one policy: it samples `policy.window`-step windows from the store, sums the `loss_*` terms of
`policy.loss(batch)` and logs every entry.

DDP: launched under `torchrun` (WORLD_SIZE > 1) each rank draws its own `batch_size / world_size`
windows and DDP averages the ranks' gradients. Each rank's loss is a mean over its own real
(unpadded) steps, so the update equals one process on the global batch when the ranks hold equally
many real steps (tests/test_runner.py checks that case), and weighs ranks equally otherwise.

CUDA graphs (`runner.cuda_graph`, one CUDA device, store on the device): the first three updates run
eagerly on a side stream (warm-up, as capture requires), the fourth captures sampling + loss +
backward + clipping + AdamW as one graph and replays it; every update is one optimiser step. The
learning rate lives in a device tensor that the graph reads, and windows are drawn from the default
CUDA generator (graph-safe) instead of the runner's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from seqrl.checkpoint import load_checkpoint, restore_rng, save_checkpoint, training_state
from seqrl.errors import CheckpointError, PresetError
from seqrl.io import atomic_write_json
from seqrl.data.store import Batch, ReplayStore
from seqrl.presets import AgentPreset, RunnerConfig, training_device
from seqrl.runners.evaluate import evaluate


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (dim >= 2); never biases, LayerNorm gains or other vectors (nanoGPT),
    nor parameters a module marks `_no_weight_decay` (Mamba's A_log and D, as mamba-ssm marks them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) for p in params]
    return [{"params": [p for p, d in zip(params, decay) if d], "weight_decay": weight_decay},
            {"params": [p for p, d in zip(params, decay) if not d], "weight_decay": 0.0}]


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in terms.items() if k.startswith("loss_"))


def distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class _LossForward(nn.Module):
    """Makes `forward` the policy's loss, so that DDP's gradient hooks see it."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.policy.loss(batch)


class OfflineRunner:
    def __init__(self, policy: nn.Module, store: ReplayStore, preset: AgentPreset, run_dir: str | Path,
                 resume: bool = False):
        cfg: RunnerConfig = preset.runner
        self.cfg, self.preset, self.store = cfg, preset, store
        self.run_dir = Path(run_dir)
        device = training_device(cfg.device)
        self.rank, self.world = distributed(device)
        if cfg.batch_size % self.world:
            raise PresetError(f"runner.batch_size {cfg.batch_size} is not divisible by {self.world} DDP ranks")
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.device = device
        torch.manual_seed(cfg.seed)
        self.policy = policy.to(device)
        if cfg.store_on_device:
            store.to(device)
        self.gen = torch.Generator(device=device if cfg.store_on_device else "cpu")
        self.gen.manual_seed(cfg.seed * 1_000_003 + self.rank)
        self.use_graph = (cfg.cuda_graph and device.type == "cuda" and self.world == 1 and cfg.store_on_device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmups = 0  # eager updates done before the graph is captured
        cuda = device.type == "cuda"
        # fused AdamW on CUDA: one kernel for all parameters; capturable, with the learning rate in a
        # device tensor, so that a CUDA graph can replay the step and still follow the schedule
        lr = torch.tensor(cfg.lr, device=device) if self.use_graph else cfg.lr
        self.opt = torch.optim.AdamW(param_groups(self.policy, cfg.weight_decay), lr=lr, betas=cfg.betas,
                                     fused=cuda or None, capturable=self.use_graph)
        self.amp = cfg.amp and device.type == "cuda"
        self.loss_fn = self.policy.loss
        if self.world > 1:  # DDP averages the gradients of what runs through its forward()
            ids = [device.index] if device.type == "cuda" else None
            self.loss_fn = nn.parallel.DistributedDataParallel(_LossForward(self.policy), device_ids=ids)
        if cfg.compile and device.type == "cuda":
            self.loss_fn = torch.compile(self.loss_fn)
        self.step = 0
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        if resume:
            if not self.ckpt_path.exists():
                raise CheckpointError(f"nothing to resume: no checkpoint at {self.ckpt_path}")
            self._restore(load_checkpoint(self.ckpt_path, preset.agent))
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            run = {"device": str(device), "world_size": self.world, "cuda_graph": self.use_graph, "amp": self.amp}
            atomic_write_json(self.run_dir / "config.json", preset.to_dict() | {"run": run})
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)

    # ------------------------------------------------------------------------------- one update
    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup_steps`, then constant (Chen et al. 2021)."""
        return self.cfg.lr * min(1.0, (step + 1) / max(self.cfg.warmup_steps, 1))

    def _set_lr(self) -> None:
        for group in self.opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(self.lr_at(self.step))
            else:
                group["lr"] = self.lr_at(self.step)

    def _loss_and_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            terms = self.loss_fn(batch)
        loss = total_loss(terms)
        loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip, foreach=True)
                     if self.cfg.grad_clip > 0 else torch.zeros((), device=loss.device))
        self.opt.step()
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = loss.detach()
        out["grad_norm"] = grad_norm.detach()
        return out

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One eager optimiser step on this rank's share of the batch; returns the logged scalars."""
        self.policy.train()
        self._set_lr()
        self.opt.zero_grad(set_to_none=True)
        out = self._loss_and_update(batch)
        self.step += 1
        return out

    def update(self) -> dict[str, torch.Tensor]:
        """Sample this rank's windows and take one optimiser step (a graph replay once captured)."""
        batch_size = self.cfg.batch_size // self.world
        if not self.use_graph:
            return self.train_step(self.store.sample_windows(batch_size, self.policy.window, self.gen).to(self.device))
        if self._warmups < 3:  # eager warm-up on a side stream, as graph capture requires
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.train_step(self.store.sample_windows(batch_size, self.policy.window))
            current.wait_stream(side)
            self._warmups += 1
            return out
        if self._graph is None:  # capture records the kernels without running them
            self.opt.zero_grad(set_to_none=True)  # grads are allocated inside the graph, overwritten on replay
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._graph_out = self._loss_and_update(self.store.sample_windows(batch_size, self.policy.window))
        self._set_lr()
        self._graph.replay()
        self.step += 1
        return self._graph_out

    # -------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.preset.agent}", unit="step",
                   disable=self.rank != 0, dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.step
        while self.step < cfg.steps:
            before = self.step
            scalars = self.update()
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                vals = {k: float(v) for k, v in scalars.items()}
                dt = time.perf_counter() - t0
                vals["samples_per_s"] = (self.step - n0) * cfg.batch_size / max(dt, 1e-9)
                t0, n0 = time.perf_counter(), self.step
                if self.writer is not None:
                    for k, v in vals.items():
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                    self.writer.add_scalar("train/lr", self.lr_at(self.step - 1), self.step)
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
            bar.update(self.step - before)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.evaluate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        results = self.evaluate()
        self.save()
        if self.writer is not None:
            self.writer.close()
        return results

    def evaluate(self) -> dict[str, Any]:
        """Evaluate every condition the policy declares; rank 0 only. Returns {label: summary}."""
        if self.rank != 0 or self.cfg.eval_episodes <= 0:
            return {}
        env = self.policy.spec.env
        out = {}
        for label, cond in self.policy.eval_conditions():
            res = evaluate(self.policy, env.env_id, self.cfg.eval_episodes, seed=self.cfg.seed + 10_000,
                           device=self.device, condition=cond, ref_scores=self.policy.spec.ref_scores, max_episode_steps=env.max_episode_steps)
            s = res.summary()
            out[label] = s
            tag = f"eval/{label}/" if label else "eval/"
            for k, v in s.items():
                self.writer.add_scalar(tag + k, v, self.step)
        atomic_write_json(self.run_dir / "eval.json", {"step": self.step, **out})
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.ckpt_path, training_state(self.preset, self.policy, self.opt, self.device,
                                                       step=self.step, generator=self.gen.get_state()))

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.policy.load_state_dict(ckpt["policy"])
        # the moments come from the checkpoint; the settings (betas, weight decay, fused/capturable,
        # the learning-rate tensor a graph reads) stay this run's, whatever device the checkpoint saw
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]
        self.opt.load_state_dict(ckpt["optimizer"])
        for group, own in zip(self.opt.param_groups, settings):
            group.update(own)
        on_device = self.device.type == "cuda"  # fused/capturable AdamW keeps its step count on the device
        for state in self.opt.state.values():
            if "step" in state:
                state["step"] = state["step"].to(self.device if on_device else "cpu", torch.float32)
        self.step = int(ckpt["step"])
        restore_rng(ckpt, self.device)
        gen_state = ckpt.get("generator")
        if self.world == 1 and gen_state is not None and gen_state.numel() == self.gen.get_state().numel():
            self.gen.set_state(gen_state)
        else:  # DDP ranks, or a generator of another device: a fresh stream per (seed, step, rank)
            self.gen.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 1_000_033 + self.step)

