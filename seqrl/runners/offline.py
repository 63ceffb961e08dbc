"""OfflineRunner: the training loop every offline policy shares (DT, BC; DM, DPT, AD later).

It knows optimisers, schedules, devices, DDP, TensorBoard, checkpoints and evaluation, and nothing of
any one policy: it samples `policy.window`-step windows from the store, sums the `loss_*` terms of
`policy.loss(batch)` and logs every entry.

DDP: launched under `torchrun` (WORLD_SIZE > 1) each rank draws its own `batch_size / world_size`
windows and DDP averages the gradients, so the update equals one process on the global batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from seqrl.checkpoint import load_checkpoint, save_checkpoint
from seqrl.data.minari_io import store_meta_scores
from seqrl.data.store import Batch, ReplayStore
from seqrl.presets import AgentPreset, RunnerConfig
from seqrl.runners.evaluate import evaluate


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (dim >= 2); never biases, LayerNorm gains or other vectors (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in terms.items() if k.startswith("loss_"))


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
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
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"runner.batch_size {cfg.batch_size} is not divisible by {self.world} DDP ranks")
        device = torch.device(cfg.device)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.device = device
        torch.manual_seed(cfg.seed)
        self.policy = policy.to(device)
        if cfg.store_on_device:
            store.to(device)
        self.gen = torch.Generator(device=device if cfg.store_on_device else "cpu")
        self.gen.manual_seed(cfg.seed * 1_000_003 + self.rank)
        self.opt = torch.optim.AdamW(param_groups(self.policy, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        warm = max(cfg.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.amp = cfg.amp and device.type == "cuda"
        self.loss_fn = self.policy.loss
        if self.world > 1:  # DDP averages the gradients of what runs through its forward()
            ids = [device.index] if device.type == "cuda" else None
            self.loss_fn = nn.parallel.DistributedDataParallel(_LossForward(self.policy), device_ids=ids)
        if cfg.compile and device.type == "cuda":
            self.loss_fn = torch.compile(self.loss_fn)
        self.step = 0
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        if resume and self.ckpt_path.exists():
            self._restore(load_checkpoint(self.ckpt_path, preset.agent))
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(preset.to_dict(), indent=2))
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)

    # ------------------------------------------------------------------------------- one update
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on this rank's share of the batch; returns the logged scalars."""
        self.policy.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            terms = self.loss_fn(batch)
        loss = total_loss(terms)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
                     if self.cfg.grad_clip > 0 else torch.tensor(0.0))
        self.opt.step()
        self.sched.step()
        self.step += 1
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = loss.detach()
        out["grad_norm"] = grad_norm.detach()
        return out

    # -------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.preset.agent}", unit="step",
                   disable=self.rank != 0, dynamic_ncols=True)
        local_batch = cfg.batch_size // self.world
        t0, n0 = time.perf_counter(), self.step
        results: dict[str, Any] = {}
        while self.step < cfg.steps:
            batch = self.store.sample_windows(local_batch, self.policy.window, self.gen)
            scalars = self.train_step(batch.to(self.device))
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                vals = {k: float(v) for k, v in scalars.items()}
                dt = time.perf_counter() - t0
                vals["samples_per_s"] = (self.step - n0) * cfg.batch_size / max(dt, 1e-9)
                t0, n0 = time.perf_counter(), self.step
                if self.writer is not None:
                    for k, v in vals.items():
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                    self.writer.add_scalar("train/lr", self.sched.get_last_lr()[0], self.step)
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
            bar.update(1)
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
                           device=self.device, condition=cond, ref_scores=store_meta_scores(self.policy.spec.meta)
                           or (env.ref_min_score, env.ref_max_score), max_episode_steps=env.max_episode_steps)
            s = res.summary()
            out[label] = s
            tag = f"eval/{label}/" if label else "eval/"
            for k, v in s.items():
                self.writer.add_scalar(tag + k, v, self.step)
        (self.run_dir / "eval.json").write_text(json.dumps({"step": self.step, **out}, indent=2))
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.ckpt_path, {
            "agent": self.preset.agent,
            "preset": self.preset.to_dict(),
            "spec": self.policy.spec.to_dict(),
            "policy": self.policy.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        })

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.policy.load_state_dict(ckpt["policy"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])


def preset_with(preset: AgentPreset, **runner_changes: Any) -> AgentPreset:
    return dataclasses.replace(preset, runner=dataclasses.replace(preset.runner, **runner_changes))

