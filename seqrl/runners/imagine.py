"""Imagination from a world-model checkpoint (the logic of `seqrl imagine`): read `context` real steps of dataset
episodes through the posterior, roll the prior `horizon` steps open loop under the dataset's own actions
(`seqrl.policies.world_model.imagine`), and compare with what really happened.

Writes into `out`: `strip.png` (per sequence, real frames above imagined ones at chosen imagined steps; line plots
of the first features for vector observations), `error.png` (generation MSE against the imagined step), `imagine.json`
(the numbers below), and `imagine.gif` (real | imagined side by side, the first sequence) when Pillow is installed.

Numbers: generation MSE per imagined step, mean over sequences and pixels in [0, 1] units (features: in the
dataset's normalised units); reward accuracy in imagination: at imagined steps with a nonzero real reward, the
fraction whose predicted reward has the real one's sign (DistractingMemory: +1 right door, -1 wrong; a model that
forgot the cue is right half of the time); the same fraction with the posterior reading the real frames of those
steps too ("reward_accuracy_posterior": the model's memory without imagination, so that a model that never learned
what the reward depends on is told apart from one that loses it while imagining); reward MSE over all imagined
steps, in the env's units.

Reference levels, from the same episodes and no model, so that a number can be read against what knowing nothing
scores: "mse_hold_per_step" / "mse_hold_mean", the generation MSE of holding the last context frame through the
horizon (a model that stops at the context); "reward_accuracy_constant", the accuracy of the better of the two
constant signs over the same rewarded steps (a model that ignores the cue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrl.checkpoint import load_checkpoint, rebuild_policy
from seqrl.data.samplers import windows_at
from seqrl.data.store import ReplayStore
from seqrl.errors import CheckpointError, DataError
from seqrl.io import atomic_write_json
from seqrl.policies.world_model import WORLD_MODELS, WorldModel, check_store, imagine, symexp


def training_length_note(steps: int, seq_len: int) -> str | None:
    """A note when imagination reaches `steps` steps into an episode, past the `seq_len`-step sequences the model
    trained on (where S4 and transformer world models lost accuracy, docs/world_model.md); else None."""
    if steps <= seq_len:
        return None
    return (f"note: imagination runs to step {steps}, past the {seq_len}-step sequences this model trained on, where "
            "S4 and transformer world models lost accuracy in docs/world_model.md's measurements (train on sequences "
            "as long as the context)")


def constant_sign_accuracy(rewards: torch.Tensor) -> float | None:
    """The share of nonzero `rewards` that the more common sign gets right (None for none): what a reward head
    that ignores everything scores at best."""
    if not rewards.numel():
        return None
    pos = float((rewards > 0).float().mean())
    return max(pos, 1.0 - pos)


def world_model_from_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[WorldModel, dict]:
    """The WorldModel of a checkpoint: a world model's (agents s4wm, rssm, twm) or the one a world-model agent
    acts from (agent dreamer: the presets s4wm_agent, dreamer, s4wm_agent_offline); CheckpointError for any other
    agent."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["agent"] not in (*WORLD_MODELS, "dreamer"):
        raise CheckpointError(f"checkpoint {checkpoint} holds agent {ckpt['agent']!r}, neither a world model "
                              f"({', '.join(WORLD_MODELS)}) nor a world-model agent (dreamer): imagination needs one")
    policy, _ = rebuild_policy(ckpt, checkpoint)
    model = policy.wm if ckpt["agent"] == "dreamer" else policy
    return model.to(device).eval(), ckpt


def score_imagination(model: WorldModel, store: ReplayStore, context: int, horizon: int, sequences: int = 8,
                      sample: bool = False, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Imagine from `sequences` episodes of `store` (drawn with `seed` among those at least context + horizon long),
    each from its first step, and score it against what happened: (the numbers of the module docstring, as JSON
    values; the tensors behind them: "obs" real and "fake" imagined observations (B, horizon, ...), "mse" (B,
    horizon)). Files are left to the caller (imagine_checkpoint writes them)."""
    for name, v in (("context", context), ("horizon", horizon), ("sequences", sequences)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"imagine: {name} must be an integer >= 1, got {v!r}")
    need = context + horizon
    lengths = store.episode_lengths
    longest = int(lengths.max()) if len(lengths) else 0
    if context > longest:
        raise DataError(f"imagine: a context of {context} steps is longer than every episode of the dataset "
                        f"(the longest has {longest} steps)")
    ok = np.flatnonzero(lengths >= need)
    if not len(ok):
        raise DataError(f"imagine: context {context} + horizon {horizon} = {need} steps is longer than every episode "
                        f"of the dataset (the longest has {longest} steps)")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ok, size=min(sequences, len(ok)), replace=False))
    device = next(model.parameters()).device
    batch = windows_at(store, store.ep_start[chosen], need).to(device)
    res = imagine(model, batch.obs[:, :context], batch.act, horizon, sample=sample)
    real = model.obs_target(batch.obs[:, context:])  # (B, H, ...) decoder units
    mse = ((res["target"] - real) ** 2).flatten(2).mean(-1)  # (B, H)
    hold = ((model.obs_target(batch.obs[:, context - 1:context]) - real) ** 2).flatten(2).mean(-1)  # (B, H)
    r_real = batch.rew[:, context:].to(res["reward"].dtype)  # env units
    paid = r_real != 0
    right = (torch.sign(res["reward"]) == torch.sign(r_real)) & paid
    right_post = None
    if bool(paid.any()):  # the same steps read through the posterior: every frame real
        with torch.no_grad():
            first = torch.zeros(batch.act.shape[:2], dtype=torch.bool, device=batch.act.device)
            first[:, 0] = True
            post = model.posterior_pass(batch.obs, batch.act, first, sample=sample)
            rew, _ = model.reward_cont(post["h"], post["z"], post["a"])
        right_post = (torch.sign(symexp(rew).mean(0)[:, context:]) == torch.sign(r_real)) & paid
    scores = {"context": context, "horizon": horizon, "trained_seq_len": model.config.seq_len,
              "sequences": len(chosen), "episodes": chosen.tolist(), "sample": sample,
              "mse_per_step": mse.mean(0).tolist(), "mse_mean": float(mse.mean()),
              "mse_hold_per_step": hold.mean(0).tolist(), "mse_hold_mean": float(hold.mean()),
              "reward_steps": int(paid.sum()),
              "reward_accuracy": float(right.sum() / paid.sum()) if bool(paid.any()) else None,
              "reward_accuracy_posterior": None if right_post is None else float(right_post.sum() / paid.sum()),
              "reward_accuracy_constant": constant_sign_accuracy(r_real[paid]),
              "reward_mse": float(((res["reward"] - r_real) ** 2).mean())}
    return scores, {"obs": batch.obs[:, context:], "fake": res["obs"], "mse": mse}


def imagine_checkpoint(checkpoint: str | Path, context: int, horizon: int, out: str | Path,
                       dataset: str | ReplayStore | None = None, sequences: int = 8, show: int = 8,
                       sample: bool = False, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """`score_imagination` on a checkpoint's world model; writes the files of the module docstring into `out` and
    returns the JSON's dict. dataset: a store, a Minari id, a saved store (`.npz`, e.g. an online run's
    `replay.npz`), or None: the checkpoint's own dataset, else the replay saved beside it (an online world-model
    agent's run). `show`: imagined steps in the strip."""
    if not isinstance(show, (int, np.integer)) or isinstance(show, bool) or show < 1:
        raise ValueError(f"imagine: show must be an integer >= 1, got {show!r}")
    model, ckpt = world_model_from_checkpoint(checkpoint, device)
    if not isinstance(dataset, ReplayStore):
        dataset = _episodes(checkpoint, ckpt, dataset)
    check_store(dataset, model.spec.observation_space, f"checkpoint {checkpoint}'s")
    scores, t = score_imagination(model, dataset, context, horizon, sequences, sample, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = np.unique(np.linspace(0, horizon - 1, min(show, horizon)).round().astype(int))
    files = {"strip": str(out / "strip.png"), "error": str(out / "error.png")}
    real_obs, fake_obs = t["obs"].float().cpu().numpy(), t["fake"].float().cpu().numpy()
    _strip(real_obs, fake_obs, steps, context, model.image, out / "strip.png")
    _error_plot(t["mse"].mean(0).cpu().numpy(), context, out / "error.png")
    gif = _gif(real_obs[0], fake_obs[0], out / "imagine.gif") if model.image else None
    if gif:
        files["gif"] = gif
    result = {"checkpoint": str(checkpoint), "agent": ckpt["agent"], "backbone": model.config.backbone,
              "latent": model.config.latent, "step": int(ckpt["step"]), **scores,
              "gif": None if gif else ("no frames" if not model.image else "skipped: Pillow is not installed"),
              "files": files}
    atomic_write_json(out / "imagine.json", result)
    return result


def _episodes(checkpoint: str | Path, ckpt: dict, dataset: str | None) -> ReplayStore:
    """The store `imagine_checkpoint` imagines from (its docstring)."""
    if not dataset:
        replay = Path(checkpoint).parent / "replay.npz"
        dataset = ckpt["spec"]["meta"].get("dataset_id") or (str(replay) if replay.is_file() else None)
    if not dataset:
        raise DataError(f"checkpoint {checkpoint} names no dataset and has no replay.npz beside it: pass one "
                        "(a Minari id or a saved store)")
    if dataset.endswith(".npz"):
        return ReplayStore.load(dataset)
    import seqrl.envs  # noqa: F401

    return ReplayStore.from_minari(dataset)


def _strip(real: np.ndarray, fake: np.ndarray, steps: np.ndarray, context: int, image: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(real), 4)
    if image:
        fig, axes = plt.subplots(2 * n, len(steps), figsize=(1.2 * len(steps), 2.5 * n), squeeze=False)
        for i in range(n):
            for j, s in enumerate(steps):
                for row, frames, label in ((2 * i, real, "real"), (2 * i + 1, fake, "imagined")):
                    ax = axes[row, j]
                    ax.imshow(_hwc(frames[i, s]).astype(np.uint8))
                    ax.set_xticks([]), ax.set_yticks([])
                    if j == 0:
                        ax.set_ylabel(f"{label} {i}", fontsize=7)
                    if row == 0:
                        ax.set_title(f"t={context + s}", fontsize=7)
    else:
        fig, axes = plt.subplots(n, 1, figsize=(6, 2 * n), squeeze=False)
        for i in range(n):
            ax = axes[i, 0]
            for k in range(min(3, real[i].reshape(len(real[i]), -1).shape[1])):
                ax.plot(context + np.arange(len(real[i])), real[i].reshape(len(real[i]), -1)[:, k], f"C{k}-", lw=1)
                ax.plot(context + np.arange(len(fake[i])), fake[i].reshape(len(fake[i]), -1)[:, k], f"C{k}--", lw=1)
            ax.set_ylabel(f"seq {i}")
        axes[-1, 0].set_xlabel("step (solid real, dashed imagined)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _error_plot(mse: np.ndarray, context: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(mse) + 1), mse)
    ax.set_xlabel(f"imagined step (after a context of {context})")
    ax.set_ylabel("generation MSE")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _hwc(frame: np.ndarray) -> np.ndarray:
    return frame if frame.shape[-1] <= frame.shape[0] else np.moveaxis(frame, 0, -1)


def _gif(real: np.ndarray, fake: np.ndarray, path: Path) -> str | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    frames = []
    for r, f in zip(real, fake):
        pair = np.concatenate([_hwc(r), np.full((_hwc(r).shape[0], 2, 3), 255.0), _hwc(f)], 1).astype(np.uint8)
        frames.append(Image.fromarray(pair).resize((pair.shape[1] * 4, pair.shape[0] * 4), Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return str(path)
