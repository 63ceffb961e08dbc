"""Cost of one imagined step against the length of the context read before it, for each world-model backbone.

For each world model (bench_wm_agent.py's MODELS: by default the GPU presets, S4D, S5, GRU and transformer; the
`*` names without `-full` are the CPU presets), a context of C real steps goes through the posterior (random vector
observations and actions on a Pendulum-shaped task: what a step costs does not depend on what the weights learned),
then H steps are imagined as `seqrl.policies.world_model.imagine` does: the backbone stepped on the prior's latent
(its mode) and the decoder, reward and continuation heads read. Reported: ms per imagined step, the H steps timed
between two synchronisations, the median of --repeats runs from the same context state (every backbone's step
returns a new state, so each run starts alike).

The context goes through the backbone in parts of --chunk steps with the state carried between them (the same
result as one pass: tests/test_dreamer.py, test_posterior_pass_in_parts_equals_one_pass), so that S4D's materialised states stay within memory at batch
1,024 x 2,000 steps; the RSSM reads its context one step at a time. The transformer runs twice: with its preset's
window (`twm-full`: its KV cache holds at most `window` = seq_len steps, so a step's cost stops growing there and
older steps drop out of reach) and with the window covering context + horizon (`twm-full-window`, attention over
the whole context as STORM and TransDreamer keep it).

    python experiments/bench_imagine.py --device cuda --out docs/results/bench_imagine.json
    python experiments/bench_imagine.py --device cpu --threads 2 --models s4wm rssm twm twm-window \\
        --contexts 8 64 256 --shapes 16x50 --out /tmp/bench_imagine_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_wm_agent import MODELS, pendulum_like_store, sync
from seqrl.policies import TaskSpec
from seqrl.policies.world_model import WorldModel, latent_sample
from seqrl.presets import load_agent

WORLD_MODELS = [m for m in MODELS if not m.startswith("agent")]
CHOICES = WORLD_MODELS + ["twm-window", "twm-full-window"]


@torch.no_grad()
def context_state(wm: WorldModel, obs: torch.Tensor, act: torch.Tensor, chunk: int):
    """The backbone state and last latent after reading obs (B, C, 3) with act (B, C, 1) through the posterior."""
    B, C = obs.shape[:2]
    first = torch.zeros(B, C, dtype=torch.bool, device=obs.device)
    first[:, 0] = True
    if wm.rssm:  # the posterior reads h_t: one step at a time
        ctx = wm.posterior_pass(obs, act, first, sample=False)
        return ctx["state"], ctx["z"][:, -1]
    z = latent_sample(wm.posterior(wm.embed(obs)), wm.config, False)  # (B, C, Z)
    a = wm.action_input(act)
    x = wm.inputs(F.pad(z[:, :-1], (0, 0, 1, 0)), F.pad(a[:, :-1], (0, 0, 1, 0)), first)  # as WorldModel.hidden
    state = None
    for lo in range(0, C, chunk):
        _, state = wm.backbone(x[:, lo:lo + chunk], state, reset=first[:, lo:lo + chunk])
    return state, z[:, -1]


@torch.no_grad()
def bench(model: str, device: str, context: int, batch: int, horizon: int, repeats: int, chunk: int) -> dict:
    name, over = MODELS[model.removesuffix("-window")]
    policy = dict(over)
    if model.endswith("-window"):
        policy["window"] = context + horizon
    preset = load_agent(name, {"policy": policy})
    store, env = pendulum_like_store("cpu", 8, 2)  # for the task's spaces only
    torch.manual_seed(0)
    wm = WorldModel(preset.policy, TaskSpec.from_store(store, env)).to(device).eval()
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, context, 3, generator=g).to(device)
    act = (torch.rand(batch, context + horizon, 1, generator=g) * 4 - 2).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    state0, z0 = context_state(wm, obs, act[:, :context], chunk)
    a = wm.action_input(act)

    def imagine_steps():
        state, z = state0, z0
        for k in range(horizon):
            t = context + k
            h, z, state = wm.dream_step(z, a[:, t - 1], state, False)
            wm.heads(h, z, a[:, t])

    imagine_steps()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        imagine_steps()
        sync(device)
        times.append((time.perf_counter() - t) / horizon * 1e3)
    return {"model": model, "context": context, "batch": batch, "horizon": horizon,
            "ms_per_step": round(statistics.median(times), 4), "ms_all": [round(x, 4) for x in times],
            "window": getattr(wm.backbone, "window", None), "d_model": preset.policy.d_model,
            "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=["s4wm-full", "s5wm-full", "rssm-full", "twm-full",
                                                     "twm-full-window"], choices=CHOICES)
    ap.add_argument("--contexts", type=int, nargs="+", default=[8, 64, 512, 2000])
    ap.add_argument("--shapes", nargs="+", default=["1024x16", "16x500"], help="BATCHxHORIZON")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=64, help="context steps per backbone pass")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    rec = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": args.device,
           "machine": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for batch, horizon in shapes:
        for model in args.models:
            for context in args.contexts:
                try:
                    row = bench(model, args.device, context, batch, horizon, args.repeats, args.chunk)
                except Exception as e:  # report and go on (out of memory at the largest sizes, say)
                    row = {"model": model, "context": context, "batch": batch, "horizon": horizon,
                           "error": f"{type(e).__name__}: {e}"[:300]}
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                rec["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(rec, indent=1))
    for batch, horizon in shapes:
        print(f"\nms per imagined step, batch {batch}, horizon {horizon}\n| model | "
              + " | ".join(f"context {c}" for c in args.contexts) + " | last / first |")
        print("|---" * (len(args.contexts) + 2) + "|")
        for model in args.models:
            rows = {r["context"]: r for r in rec["rows"]
                    if r["model"] == model and r["batch"] == batch and r["horizon"] == horizon}
            ms = [rows.get(c, {}).get("ms_per_step") for c in args.contexts]
            ratio = f"{ms[-1] / ms[0]:.2f}x" if ms[0] and ms[-1] else ""
            print(f"| {model} | " + " | ".join(f"{m:.3f}" if m else "error" for m in ms) + f" | {ratio} |")


if __name__ == "__main__":
    main()
