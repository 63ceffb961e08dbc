"""Trainer: the one training loop of every agent (DT, DM, BC, recurrent PPO; world models and in-context
agents next). It knows optimisers, schedules, devices, AMP, CUDA graphs, torch.compile, DDP,
TensorBoard, checkpoints, resume and evaluation, and nothing of any one agent.

The loop, top to bottom:

    while budget left:
        for batch in source.iteration(agent):       # a dataset: one sampled batch; an env: a rollout's minibatches
            terms = agent.losses(batch)             # loss_* terms and diagnostics
            per optimiser group: backward of its loss_* terms, clip, step
            agent.after_update()                    # the agent's own schedules
        log, evaluate, checkpoint on their cadences (counted in updates)

The experience source (seqrl/runners/sources.py) is picked by the agent preset's `source.kind`. The
agent declares its optimiser groups (`optimizer_groups()`: parameters, the loss terms that step them, a
learning-rate scale); each gets a fused AdamW on CUDA, weight decay on matrices only, linear warm-up
then a constant or linearly decaying learning rate, and gradient-norm clipping of its own.

CUDA graphs (`trainer.cuda_graph`, one CUDA device): the first three updates run eagerly on a side stream
(warm-up, as capture requires), the fourth captures losses + backward + clipping + AdamW + `after_update` as
one graph and replays it; every update is one optimiser step. Learning rates live in device tensors the graph
reads. Two kinds of source take a graph:
- a dataset source on the device (`source.graphable`): sampling is captured too, drawn from the default CUDA
  generator (graph-safe) instead of the trainer's own;
- a source whose batches all have one shape (`source.fixed_batches`: the world-model agents' replay, which
  grows, so its sampling stays outside): each batch is copied into the tensors the graph was captured on
  (`copy_batch`), then the graph replays.

DDP: launched under `torchrun` (WORLD_SIZE > 1) each rank draws `batch_size / world_size` samples and
DDP averages the ranks' gradients. Each rank's loss is a mean over its own real (unpadded) steps, so the
update equals one process on the global batch when the ranks hold equally many real steps
(tests/test_trainer.py checks that case), and weighs ranks equally otherwise. DDP takes agents with one
optimiser group and dataset sources.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from seqrl.checkpoint import load_checkpoint, restore_rng, save_checkpoint, training_state
from seqrl.cpu import set_threads
from seqrl.errors import CheckpointError, PresetError, TrainingError, WriteError
from seqrl.io import atomic_write_json
from seqrl.kernels.scan import kernel_status
from seqrl.policies.base import Agent
from seqrl.presets import AgentPreset, differences, training_device
from seqrl.progress import progress
from seqrl.runners.evaluate import evaluate


def copy_batch(dst: Any, src: Any) -> None:
    """Copy batch `src` into batch `dst` in place, tensor by tensor (dataclasses, dicts, tuples of tensors):
    how a CUDA graph captured on `dst` runs on `src`. TrainingError when their structure, shapes or dtypes
    differ (a graph replays one shape)."""
    def walk(d: Any, s: Any, where: str) -> None:
        if isinstance(d, torch.Tensor):
            if not isinstance(s, torch.Tensor) or d.shape != s.shape or d.dtype != s.dtype:
                got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, torch.Tensor) else type(s).__name__
                raise TrainingError(f"cuda_graph: batch field {where} is {got}, the graph was captured on "
                                    f"{tuple(d.shape)} {d.dtype}; a graph replays batches of one shape (set "
                                    f"trainer.cuda_graph = false for this source)")
            d.copy_(s, non_blocking=True)
        elif dataclasses.is_dataclass(d) and type(s) is type(d):
            for f in dataclasses.fields(d):
                walk(getattr(d, f.name), getattr(s, f.name), f"{where}.{f.name}".lstrip("."))
        elif isinstance(d, dict) and isinstance(s, dict) and d.keys() == s.keys():
            for k in d:
                walk(d[k], s[k], f"{where}[{k!r}]")
        elif isinstance(d, (tuple, list)) and isinstance(s, (tuple, list)) and len(d) == len(s):
            for i, (a, b) in enumerate(zip(d, s)):
                walk(a, b, f"{where}[{i}]")
        elif isinstance(d, (dict, tuple, list)) or dataclasses.is_dataclass(d) or d != s:
            desc = lambda x: sorted(x) if isinstance(x, dict) else type(x).__name__  # noqa: E731
            raise TrainingError(f"cuda_graph: batch field {where or 'batch'} is {desc(s)}, the graph was captured on "
                                f"{desc(d)}; a graph replays batches of one structure")

    walk(dst, src, "")


def param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings (dim >= 2); never biases, LayerNorm gains or other vectors (nanoGPT),
    nor parameters a module marks `_no_weight_decay` (Mamba's A_log and D, as mamba-ssm marks them)."""
    decay = [p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) for p in params]
    return [{"params": [p for p, d in zip(params, decay) if d], "weight_decay": weight_decay},
            {"params": [p for p, d in zip(params, decay) if not d], "weight_decay": 0.0}]


def distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class _LossForward(nn.Module):
    """Makes `forward` the agent's losses, so that DDP's gradient hooks see them."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.agent.losses(batch)


class Trainer:
    def __init__(self, agent: Agent, source: Any, preset: AgentPreset, run_dir: str | Path, resume: bool = False):
        cfg = preset.trainer
        self.cfg, self.preset, self.source, self.run_dir = cfg, preset, source, Path(run_dir)
        device = training_device(cfg.device)
        self.rank, self.world = distributed(device)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.device = device
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        if self.rank == 0:
            self._check_run_dir(resume)
        self.threads = set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.agent = agent.to(device)
        self.gen = source.start(agent, device, cfg.seed, self.rank, self.world)  # the sampler's generator
        self.groups = agent.optimizer_groups()
        if self.world > 1 and len(self.groups) > 1:
            raise PresetError(f"agent {preset.agent!r} has {len(self.groups)} optimiser groups: DDP takes one")
        self.use_graph = (cfg.cuda_graph and device.type == "cuda" and self.world == 1
                          and (source.graphable or source.fixed_batches))
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmups = 0  # eager updates done before the graph is captured
        # fused AdamW on CUDA: one kernel per group; capturable, with the learning rate in a device tensor,
        # so that a CUDA graph can replay the step and still follow the schedule
        self.opts = {}
        for g in self.groups:
            lr = torch.tensor(cfg.lr * g.lr_scale, device=device) if self.use_graph else cfg.lr * g.lr_scale
            self.opts[g.name] = torch.optim.AdamW(param_groups(g.params, cfg.weight_decay), lr=lr, betas=cfg.betas,
                                                  eps=cfg.eps, fused=device.type == "cuda" or None,
                                                  capturable=self.use_graph)
        self.amp = cfg.amp and device.type == "cuda"
        self.loss_fn = agent.losses
        if self.world > 1:  # DDP averages the gradients of what runs through its forward()
            ids = [device.index] if device.type == "cuda" else None
            self.loss_fn = nn.parallel.DistributedDataParallel(_LossForward(agent), device_ids=ids)
        if cfg.compile and device.type == "cuda":
            self.loss_fn = torch.compile(self.loss_fn)
        self.step = 0  # optimiser updates done
        self.saved_step: int | None = None  # the update of the newest checkpoint on disk
        self._finite = torch.ones((), dtype=torch.bool, device=device)  # every loss since the last check was finite
        self._checked = 0  # the update at which the losses were last found finite
        if resume:
            ckpt = load_checkpoint(self.ckpt_path, preset.agent)
            self._check_resumable(ckpt)
            self._restore(ckpt)
            self.saved_step = self._checked = self.step
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            run = {"device": str(device), "world_size": self.world, "cuda_graph": self.use_graph, "amp": self.amp,
                   "threads": self.threads, "kernels": kernel_status(device)}
            atomic_write_json(self.run_dir / "config.json", preset.to_dict() | {"env": dataclasses.asdict(agent.spec.env), "run": run})
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._x() or None)

    # ------------------------------------------------------------------------------- one update
    def _x(self) -> int:
        """The TensorBoard x axis: env steps for env sources, updates otherwise."""
        return self.source.global_step(self.step)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then constant or a linear decay to 0 over the budget."""
        f = min(1.0, (step + 1) / max(self.cfg.warmup_steps, 1))
        if self.cfg.schedule == "linear":
            done = max(step / self.cfg.steps if self.cfg.steps else 0.0, self.source.progress())
            f *= max(1.0 - done, 0.0)
        return f

    def _set_lr(self) -> None:
        f = self.lr_factor(self.step)
        for g in self.groups:
            for group in self.opts[g.name].param_groups:
                lr = self.cfg.lr * g.lr_scale * f
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    def _loss_and_update(self, batch: Any) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            terms = self.loss_fn(batch)
        loss_terms = [k for k in terms if k.startswith("loss_")]
        loss = sum(terms[k] for k in loss_terms)
        if len(self.groups) == 1 and self.groups[0].losses is None:
            loss.backward()
        else:  # each optimiser's gradient comes from its own loss terms only
            for i, g in enumerate(self.groups):
                missing = [k for k in g.losses or () if k not in terms]
                if missing:
                    raise PresetError(f"optimiser group {g.name!r} names loss terms {missing} that losses() does "
                                      f"not return; it returns {loss_terms}")
                part = loss if g.losses is None else sum(terms[k] for k in g.losses)
                part.backward(inputs=g.params, retain_graph=i < len(self.groups) - 1)
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = loss.detach()
        for g in self.groups:
            norm = (nn.utils.clip_grad_norm_(g.params, self.cfg.grad_clip, foreach=True) if self.cfg.grad_clip > 0
                    else nn.utils.get_total_norm([p.grad for p in g.params if p.grad is not None], foreach=True))
            out["grad_norm" if len(self.groups) == 1 else f"grad_norm_{g.name}"] = norm.detach()
            self.opts[g.name].step()
        self.agent.after_update()
        return out

    def _zero_grad(self) -> None:
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One eager update on this rank's share of the batch; returns the logged scalars (tensors)."""
        self.agent.train()
        self._set_lr()
        self._zero_grad()
        out = self._loss_and_update(batch)
        self.step += 1
        return out

    def graph_step(self, batch: Any = None) -> dict[str, torch.Tensor]:
        """One update as a graph replay once captured: on `batch` (copied into the captured batch's tensors), or
        with None on a batch the dataset source draws inside the graph."""
        draw = (lambda: self.source.draw(self.agent, None)) if batch is None else (lambda: batch)  # noqa: E731
        if self._warmups < 3:  # eager warm-up on a side stream, as graph capture requires
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.train_step(draw())
            current.wait_stream(side)
            self._warmups += 1
            return out
        if self._graph is None:  # capture records the kernels without running them
            self.agent.train()
            self._zero_grad()  # grads are allocated inside the graph, overwritten on replay
            self._graph = torch.cuda.CUDAGraph()
            self._graph_in = batch  # the tensors the graph reads (None: it draws its own)
            with torch.cuda.graph(self._graph):
                self._graph_out = self._loss_and_update(draw())
        elif batch is not None:
            copy_batch(self._graph_in, batch)
        self._set_lr()
        self._graph.replay()
        self.step += 1
        # a copied-in batch: several updates per iteration, each keeps its own scalars (a replay overwrites them)
        return self._graph_out if batch is None else {k: v.clone() for k, v in self._graph_out.items()}

    def iteration(self) -> list[dict[str, torch.Tensor]]:
        """One iteration of the source (one sampled batch, or one rollout's minibatches): its updates' scalars.

        The source may read each update's scalars back (PPO stops an epoch loop early on its KL)."""
        if self.use_graph and self.source.graphable:
            return [self.graph_step()]
        step = self.graph_step if self.use_graph else self.train_step
        outs: list[dict[str, torch.Tensor]] = []
        it = self.source.iteration(self.agent, self.gen)
        scalars = None
        while self.cfg.steps == 0 or self.step < self.cfg.steps:
            try:
                batch = it.send(scalars)
            except StopIteration:
                break
            scalars = step(batch)
            outs.append(scalars)
        it.close()
        return outs

    # -------------------------------------------------------------------------------------- run
    def done(self) -> bool:
        return (self.cfg.steps and self.step >= self.cfg.steps) or self.source.done()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            if self.writer is not None:
                self.writer.close()
            self.source.close()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        total = cfg.steps or None
        bar = progress(total=total, initial=self.step, desc=f"train {self.preset.agent}", unit="update",
                       disable=self.rank != 0)
        t0, n0 = time.perf_counter(), self.step
        while not self.done():
            before, x = self.step, self._x()
            outs = self.iteration()
            if not outs:
                if self._x() == x:  # no update and no progress: the source has nothing more to give
                    break
                continue  # an env source still filling its store before the first replayed update
            for o in outs:  # on the device, no synchronisation: read at the next log or checkpoint
                self._finite &= torch.isfinite(o["loss"])
            crossed = lambda every: every and self.step // every > before // every  # noqa: E731
            if crossed(cfg.log_every) or self.done():
                self.check_finite()
                vals = {k: float(torch.stack([o[k].float() for o in outs]).mean()) for k in outs[-1]}
                dt = time.perf_counter() - t0
                vals["updates_per_s"] = (self.step - n0) / max(dt, 1e-9)
                t0, n0 = time.perf_counter(), self.step
                self._log(vals)
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
            bar.update(self.step - before)
            if crossed(cfg.eval_every) and not self.done():
                self.evaluate()
            if crossed(cfg.checkpoint_every):
                self.save()
        bar.close()
        self.check_finite()
        results = self.evaluate()
        self.save()
        return results

    def check_finite(self) -> None:
        """TrainingError when a loss since the last check was NaN or inf: the weights it stepped are not
        saved, and the message names the last good checkpoint."""
        if bool(self._finite):
            self._checked = self.step
            return
        kept = (f"the last good checkpoint is {self.ckpt_path} (update {self.saved_step})" if self.saved_step is not None
                else "no checkpoint was written")
        raise TrainingError(f"training stopped: the loss became NaN or inf between updates {self._checked} and "
                            f"{self.step}; nothing after it was saved and {kept}. Lower trainer.lr (now "
                            f"{self.cfg.lr:g}) or set trainer.grad_clip > 0 (now {self.cfg.grad_clip:g})")

    def _log(self, vals: dict[str, float]) -> None:
        if self.writer is None:
            return
        x = self._x()
        for k, v in vals.items():
            self.writer.add_scalar(f"train/{k}", v, x)
        for k, v in self.source.scalars().items():
            self.writer.add_scalar(f"charts/{k}", v, x)
        self.writer.add_scalar("train/lr", self.cfg.lr * self.lr_factor(self.step - 1), x)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate every condition of the agent's protocol; rank 0 only. Returns {label: summary}."""
        if self.rank != 0 or self.cfg.eval_episodes <= 0:
            return {}
        spec, proto = self.agent.spec, self.agent.eval_protocol()
        out = {}
        for label, cond in proto.conditions:
            res = evaluate(self.agent, spec.env, self.cfg.eval_episodes, seed=self.cfg.seed + 10_000,
                           device=self.device, condition=cond, ref_scores=spec.ref_scores, episodes=proto.episodes)
            out[label] = s = res.summary()
            tag = f"eval/{label}/" if label else "eval/"
            for k, v in s.items():
                self.writer.add_scalar(tag + k, v, self._x())
        atomic_write_json(self.run_dir / "eval.json", {"step": self.step, "global_step": self._x(), **out})
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write the checkpoint atomically, after checking that the losses since the last check were finite.
        A write that fails (a full disk) stops training and says which checkpoint is kept."""
        if self.rank != 0:
            return
        self.check_finite()
        try:
            self.source.save(self.run_dir)
            save_checkpoint(self.ckpt_path, training_state(
                self.preset, self.agent, self.opts, self.device, step=self.step, source=self.source.state_dict(),
                generator=self.gen.get_state()))
        except WriteError as e:
            kept = (f"the checkpoint of update {self.saved_step} is kept" if self.saved_step is not None
                    else "no checkpoint was written")
            raise TrainingError(f"training stopped at update {self.step}: {e}; {kept}") from e
        self.saved_step = self.step

    # ------------------------------------------------------------------------------ run folders
    def _check_run_dir(self, resume: bool) -> None:
        """Before anything is built: never train over another run's checkpoint, and fail now, not at the
        first checkpoint, when the folder cannot be written."""
        if resume and not self.ckpt_path.is_file():
            raise CheckpointError(f"nothing to resume: no checkpoint at {self.ckpt_path}")
        if not resume and self.ckpt_path.exists():
            raise PresetError(f"run folder {self.run_dir} already holds a checkpoint: continue that run with --resume, "
                              f"or pass a fresh --run-dir (seqrl never trains over a run)")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.run_dir):
                pass
        except OSError as e:
            raise WriteError(f"cannot write to the run folder {self.run_dir}: {e.strerror or e}") from e

    def _check_resumable(self, ckpt: dict[str, Any]) -> None:
        """CheckpointError naming every difference between the run in the checkpoint and this one that
        resuming cannot carry over: the agent's config, the source's, the env, the dataset and its spaces
        and normalisation. The trainer's settings may change (a longer budget is what resuming is for)."""
        now, spec = self.preset.to_dict(), self.agent.spec.to_dict()
        then, spec_then = ckpt["preset"], ckpt["spec"]
        names = ("in the checkpoint", "now")
        diffs = differences(then.get("policy"), now["policy"], "policy.", names)
        src_then = {k: v for k, v in then.get("source", {}).items() if k != "env_steps"}
        diffs += differences(src_then, {k: v for k, v in now["source"].items() if k != "env_steps"}, "source.", names)
        env_keys = ("env_id", "env_kwargs", "max_episode_steps", "reward_scale")
        diffs += differences({k: spec_then["env"].get(k) for k in env_keys}, {k: spec["env"][k] for k in env_keys},
                             "env.", names)
        diffs += differences(spec_then["meta"].get("dataset_id"), spec["meta"].get("dataset_id"), "dataset.", names)
        for key in ("observation_space", "action_space"):
            if spec_then[key] != spec[key]:
                diffs.append(f"{key}: {spec_then[key]} in the checkpoint, {spec[key]} now")
        if not diffs:
            for key in ("obs_mean", "obs_std"):  # same dataset id, other data: it was rebuilt since
                if not _close(spec_then[key], spec[key]):
                    diffs.append(f"the dataset's observation {key.split('_')[1]} differs from the checkpoint's "
                                 f"(the dataset changed since)")
        if diffs:
            raise CheckpointError(f"cannot resume {self.ckpt_path}: " + "; ".join(diffs) + ". Resume with the "
                                  "agent preset, dataset and env it was trained with, or start a fresh --run-dir")

    def _restore(self, ckpt: dict[str, Any]) -> None:  # after _check_resumable
        self.agent.load_state_dict(ckpt["policy"])
        if set(ckpt["optimizers"]) != set(self.opts):
            raise CheckpointError(f"checkpoint {self.ckpt_path} holds optimisers {sorted(ckpt['optimizers'])}, "
                                  f"the agent has {sorted(self.opts)}")
        for name, opt in self.opts.items():
            # the moments come from the checkpoint; the settings (betas, weight decay, fused/capturable,
            # the learning-rate tensor a graph reads) stay this run's, whatever device the checkpoint saw
            settings = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            opt.load_state_dict(ckpt["optimizers"][name])
            for group, own in zip(opt.param_groups, settings):
                group.update(own)
            on_device = self.device.type == "cuda"  # fused/capturable AdamW keeps its step count on the device
            for state in opt.state.values():
                if "step" in state:
                    state["step"] = state["step"].to(self.device if on_device else "cpu", torch.float32)
        self.step = int(ckpt["step"])
        self.source.load_state_dict(ckpt["source"])
        self.source.restore(self.run_dir)
        restore_rng(ckpt, self.device)
        gen_state = ckpt.get("generator")
        if self.world == 1 and gen_state is not None and gen_state.numel() == self.gen.get_state().numel():
            self.gen.set_state(gen_state)
        else:  # DDP ranks, or a generator of another device: a fresh stream per (seed, step, rank)
            self.gen.manual_seed((self.cfg.seed * 1_000_003 + self.rank) * 1_000_033 + self.step)


def _close(a: Any, b: Any) -> bool:
    """Normalisation statistics (lists, or dicts of lists by leaf) equal to float32 rounding."""
    import numpy as np

    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))
