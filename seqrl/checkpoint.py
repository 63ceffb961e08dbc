"""Checkpoints: weights (with the agent's schedules, which live in buffers) + agent preset + TaskSpec
(spaces, normalisation, env, dataset metadata) + optimiser states + the trainer's counters, the
source's state and the RNG states, written atomically and read with `weights_only=True` (no pickled
code runs). A checkpoint alone is enough to evaluate or resume.

Format 2 is the one-trainer layout (`preset` with `source` and `trainer` tables, `optimizers` by group).
Format 1 checkpoints (seqrl before it) of dt, bc and dm convert with `seqrl convert OLD NEW`: the
weights are the same; the optimiser moments are kept too. Format 1 gtrxl/lstm_ppo checkpoints cannot
be converted: those agents now embed through the shared tokenizer and action head.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from seqrl.errors import CheckpointError, SeqrlError
from seqrl.io import atomic_write, remove_stale_temps

FORMAT_VERSION = 2


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)  # serialise fully before touching the disk
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _safe_load(path: Path) -> Any:
    """torch.load with weights_only=True; any failure is a CheckpointError in our words. PyTorch's own
    message for a file holding Python objects advises loading with weights_only=False, which would run
    the file's code: it is never passed on."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise CheckpointError(f"checkpoint {path} holds a Python object ({found.group(1)}) that a seqrl checkpoint "
                                  f"never holds; seqrl does not unpickle it. The file was not written by seqrl, or was "
                                  f"altered") from e
        # zip, EOF, OS, key and value errors of a truncated, corrupt or foreign file
        reason = str(e).split("\n")[0][:200]
        if "weights_only" in reason:
            reason = type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a checkpoint ({type(e).__name__}: "
                              f"{reason})") from e


def load_checkpoint(path: str | Path, agent: str | None = None) -> dict[str, Any]:
    """Read a checkpoint; `agent`, when given, must match the checkpoint's agent."""
    path = Path(path)
    remove_stale_temps(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    ckpt = _safe_load(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == 1:
        raise CheckpointError(f"checkpoint {path} has format 1 (seqrl before the one-trainer change); this seqrl "
                              f"reads format {FORMAT_VERSION}. Convert it with: seqrl convert {path} NEW.pt "
                              f"(dt, bc, dm), or retrain (gtrxl, lstm_ppo)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a seqrl checkpoint (format {FORMAT_VERSION})")
    missing = [k for k in ("agent", "preset", "spec", "policy", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if agent is not None and ckpt["agent"] != agent:
        raise CheckpointError(f"checkpoint {path} holds agent {ckpt['agent']!r}, not {agent!r}")
    return ckpt


def policy_from_checkpoint(path: str | Path, agent: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild the agent of a checkpoint. Returns (agent, agent preset, checkpoint dict)."""
    ckpt = load_checkpoint(path, agent)
    policy, preset = rebuild_policy(ckpt, path)
    return policy.to(device), preset, ckpt


def rebuild_policy(ckpt: dict[str, Any], path: str | Path):
    """The agent (on the CPU) and agent preset of a checkpoint `load_checkpoint` read from `path`; CheckpointError
    when they do not rebuild or its weights hold what training never saves."""
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.presets import agent_from_dict

    try:
        preset = agent_from_dict(ckpt["preset"])
        spec = TaskSpec.from_dict(ckpt["spec"])
        policy = policy_class(preset.agent)(preset.policy, spec)
        policy.load_state_dict(ckpt["policy"])
    except (SeqrlError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not rebuild its policy ({type(e).__name__}: {e})") from e
    for name, t in policy.state_dict().items():  # training never saves these: the file was altered or corrupted
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"checkpoint {path}: its weights hold NaN or inf ({name})")
        if name.endswith("obs_std") and not (t > 0).all():
            raise CheckpointError(f"checkpoint {path}: its observation std ({name}) is not positive")
    return policy, preset


def training_state(preset, agent: torch.nn.Module, opts: dict[str, torch.optim.Optimizer], device: torch.device,
                   **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds (agent, preset, TaskSpec, weights, optimisers by group, RNG states), plus
    the trainer's own entries (`extra`: its step counter, the source's state, the sampler's generator)."""
    return {"agent": preset.agent, "preset": preset.to_dict(), "spec": agent.spec.to_dict(),
            "policy": agent.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, **extra}


def convert_format1(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a format-1 checkpoint of dt, bc or dm (seqrl before the one trainer) as format 2."""
    src = Path(src)
    old = _safe_load(src)
    if not isinstance(old, dict) or old.get("format") != 1:
        raise CheckpointError(f"{src} is not a format-1 seqrl checkpoint")
    if old.get("agent") not in ("dt", "bc", "dm"):
        raise CheckpointError(f"checkpoint {src} holds agent {old.get('agent')!r}: only dt, bc and dm convert "
                              f"(gtrxl and lstm_ppo changed their network: retrain them)")
    runner = dict(old["preset"]["runner"])
    source = {"kind": "dataset", "batch_size": runner.pop("batch_size"), "store_on_device": runner.pop("store_on_device")}
    preset = {"agent": old["agent"], "policy": old["preset"]["policy"], "source": source, "trainer": runner}
    new = {"agent": old["agent"], "preset": preset, "spec": old["spec"], "policy": old["policy"],
           "optimizers": {"agent": old["optimizer"]}, "step": old["step"], "source": {},
           "generator": old.get("generator"), "torch_rng": old["torch_rng"], "cuda_rng": old.get("cuda_rng")}
    from seqrl.presets import agent_from_dict

    try:
        agent_from_dict(preset)
    except SeqrlError as e:
        raise CheckpointError(f"checkpoint {src}: its preset does not convert ({e})") from e
    return save_checkpoint(dst, new)


def restore_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    """The RNG states `training_state` saved (the CUDA one only on CUDA)."""
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
