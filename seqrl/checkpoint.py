"""Checkpoints: weights + agent preset + TaskSpec (spaces, normalisation, env, dataset metadata) +
optimiser state, written atomically. A checkpoint alone is enough to evaluate or resume."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from seqrl.errors import CheckpointError, SeqrlError
from seqrl.io import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)  # serialise fully before touching the disk
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: str | Path, agent: str | None = None) -> dict[str, Any]:
    """Read a checkpoint; `agent`, when given, must match the checkpoint's agent."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a seqrl checkpoint (format {FORMAT_VERSION})")
    missing = [k for k in ("agent", "preset", "spec", "policy", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if agent is not None and ckpt["agent"] != agent:
        raise CheckpointError(f"checkpoint {path} holds agent {ckpt['agent']!r}, not {agent!r}")
    return ckpt


def policy_from_checkpoint(path: str | Path, agent: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild the policy of a checkpoint. Returns (policy, agent preset, checkpoint dict)."""
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.presets import agent_from_dict

    ckpt = load_checkpoint(path, agent)
    try:
        preset = agent_from_dict(ckpt["preset"])
        spec = TaskSpec.from_dict(ckpt["spec"])
        policy = policy_class(preset.agent)(preset.policy, spec)
        policy.load_state_dict(ckpt["policy"])
    except (SeqrlError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not rebuild its policy ({type(e).__name__}: {e})") from e
    return policy.to(device), preset, ckpt


def training_state(preset, policy: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                   **extra: Any) -> dict[str, Any]:
    """What every runner's checkpoint holds (agent, preset, TaskSpec, weights, optimiser, RNG states),
    plus the runner's own entries (`extra`: its step counters, sampler state...)."""
    return {"agent": preset.agent, "preset": preset.to_dict(), "spec": policy.spec.to_dict(),
            "policy": policy.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, **extra}


def restore_rng(ckpt: dict[str, Any], device: torch.device) -> None:
    """The RNG states `training_state` saved (the CUDA one only on CUDA)."""
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
