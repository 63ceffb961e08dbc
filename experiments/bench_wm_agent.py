"""Speed of the world models and the world-model agent through the one Trainer, in one run.

1. `update`: ms per optimiser update (sample + losses + backward + clipping + AdamW; for the agent also the
   imagination and the actor-critic), for each backbone (S4, GRU, transformer) of the world model
   (agents/s4wm.toml's family at the CPU preset sizes, *_small) and of the offline agent
   (agents/s4wm_agent_offline.toml), under four trainer settings: the whole update as one CUDA graph or eager,
   each with bf16 autocast or fp32. On a synthetic Pendulum-shaped store (obs 3, one Box action, 100 episodes of
   200 steps). `--warmup` updates (the graph's 3 eager warm-ups and its capture among them), then `--timed`
   updates between two synchronisations, `--repeats` times; the median is reported.
2. `online`: env-steps/s and updates/s of agents/s4wm_agent.toml and agents/dreamer.toml on CartPole-v1 through
   the env source (4 envs; the train ratio is the preset's, 256 replayed steps per env step), for `--env-steps`
   env steps: eager, and on CUDA also with the update as a CUDA graph (batches sampled outside it, copied in).

    python experiments/bench_wm_agent.py --device cuda --out docs/results/bench_wm_agent_cuda.json
    python experiments/bench_wm_agent.py --device cpu --threads 2 --parts update --modes eager-fp32 --out ...
    python experiments/bench_wm_agent.py --device cuda --parts update --models s4wm-full rssm-full twm-full \
        --modes graph-fp32 eager-fp32 --seq-lens 1024 --batch 4 --out ...   # S4 vs GRU vs transformer at length
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from seqrl.data.store import ReplayStore
from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent
from seqrl.runners.sources import DatasetSource, build_source
from seqrl.runners.trainer import Trainer

MODELS = {  # name: (agent preset, policy overrides)
    "s4wm": ("s4wm_small", {}),
    "rssm": ("rssm_small", {}),
    "twm": ("twm_small", {}),
    "s5wm": ("s4wm_small", {"ssm_kind": "s5"}),
    "s4wm-full": ("s4wm", {}),  # the GPU presets (width 256, two blocks)
    "rssm-full": ("rssm", {}),
    "twm-full": ("twm", {}),
    "s5wm-full": ("s4wm", {"ssm_kind": "s5"}),  # S5 layers (R2I's): one state of d_state modes shared by the channels
    "agent-s4": ("s4wm_agent_offline", {}),
    "agent-gru": ("s4wm_agent_offline", {"world_model": {"backbone": "gru"}}),
    "agent-transformer": ("s4wm_agent_offline", {"world_model": {"backbone": "transformer"}}),
}
MODES = {"graph-bf16": (True, True), "eager-bf16": (False, True), "graph-fp32": (True, False),
         "eager-fp32": (False, False)}


def pendulum_like_store(device: str, T: int = 200, E: int = 100) -> tuple[ReplayStore, EnvPreset]:
    rng = np.random.default_rng(0)
    eps = [{"obs": rng.standard_normal((T + 1, 3), dtype=np.float32),
            "act": rng.uniform(-2, 2, (T, 1)).astype(np.float32), "rew": rng.standard_normal(T).astype(np.float32),
            "term": np.zeros(T, bool), "trunc": np.eye(T, dtype=bool)[-1]} for _ in range(E)]
    store = ReplayStore.from_episodes(eps, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                                      gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
                                      meta={"dataset_id": "bench/pendulum-like"})
    return store.to(device), EnvPreset(name="pendulum", env_id="Pendulum-v1", max_episode_steps=200)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_update(model: str, mode: str, device: str, threads: int, warmup: int, timed: int, repeats: int,
                 seq_len: int = 0, batch: int = 0) -> dict:
    name, policy_over = MODELS[model]
    graph, amp = MODES[mode]
    # episodes longer than the longest sequence asked for (sequences run across episode ends too)
    store, env = pendulum_like_store(device, *((max(200, seq_len + 1), 8) if seq_len else (200, 100)))
    trainer = {"device": device, "cuda_graph": graph, "amp": amp, "threads": threads, "eval_episodes": 0,
               "checkpoint_every": 0, "steps": 10**9}
    over = {"policy": dict(policy_over), "trainer": trainer}
    if seq_len:
        if model.startswith("agent"):
            over["policy"]["world_model"] = over["policy"].get("world_model", {}) | {"seq_len": seq_len}
        else:
            over["policy"]["seq_len"] = seq_len
    if batch:
        over["source"] = {"batch_size": batch}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    preset = load_agent(name, over)
    torch.manual_seed(0)
    agent = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env))
    with tempfile.TemporaryDirectory() as run_dir:
        r = Trainer(agent, DatasetSource(preset.source, store), preset, Path(run_dir) / "run")
        for _ in range(warmup):
            r.iteration()
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(timed):
                out = r.iteration()[-1]
            sync(device)
            times.append((time.perf_counter() - t) / timed * 1e3)
        finite = all(bool(torch.isfinite(v).all()) for v in out.values())
    wm = preset.policy.world_model if hasattr(preset.policy, "world_model") else preset.policy
    return {"model": model, "mode": mode, "asked_seq_len": seq_len, "graph": r.use_graph, "amp": r.amp,
            "ms": round(statistics.median(times), 3), "ms_all": [round(x, 3) for x in times],
            "batch": preset.source.batch_size, "seq_len": wm.seq_len,
            "d_model": wm.d_model, "params": sum(p.numel() for p in agent.parameters()), "finite": finite,
            "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None,
            "loss_recon": round(float(out["loss_recon"]), 4)}


def bench_online(agent: str, device: str, threads: int, env_steps: int, graph: bool) -> dict:
    over = {"source": {"env_steps": env_steps, "learning_starts": 1024},
            "trainer": {"device": device, "threads": threads, "eval_episodes": 0, "checkpoint_every": 0,
                        "cuda_graph": graph}}
    preset = load_agent(agent, over)
    source, spec, _ = build_source(preset, None, "CartPole-v1", {})
    torch.manual_seed(0)
    policy = policy_class(preset.agent)(preset.policy, spec)
    with tempfile.TemporaryDirectory() as run_dir:
        t = time.perf_counter()
        r = Trainer(policy, source, preset, Path(run_dir) / "run")
        r.run()
        wall = time.perf_counter() - t
    return {"agent": agent, "cuda_graph": r.use_graph, "env_steps": source.env_steps, "updates": r.step,
            "wall_s": round(wall, 1), "env_steps_per_s": round(source.env_steps / wall, 1),
            "updates_per_s": round(r.step / wall, 2),
            "train_ratio": preset.source.train_ratio, "n_envs": preset.source.n_envs,
            "batch": f"{preset.source.batch_size} x {preset.policy.world_model.seq_len}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parts", nargs="+", default=["update", "online"], choices=["update", "online"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--timed", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--env-steps", type=int, default=8192)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[0], help="training sequence lengths (0: the preset's)")
    ap.add_argument("--batch", type=int, default=0, help="sequences per update (0: the preset's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not args.device.startswith("cuda"):
        args.modes = [m for m in args.modes if not MODES[m][0] and not MODES[m][1]] or ["eager-fp32"]
    rec = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": args.device,
           "machine": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
           "torch": torch.__version__, "threads": args.threads, "update": [], "online": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # eager settings first (the online runs' eager one last among them), then the graphs: a capture that fails
    # leaves the CUDA generator unusable for the rest of the process, and should cost only what comes after it
    eager = [m for m in args.modes if not MODES[m][0]]
    graphs = [m for m in args.modes if MODES[m][0]]
    upd = "update" in args.parts
    order = [(mod, m, L) for m in eager for mod in args.models for L in args.seq_lens] if upd else []
    online = [("online", False, 0)] + ([("online", True, 0)] if args.device.startswith("cuda") else [])
    for model, mode, L in order + online[:1] + [(mod, m, L) for m in graphs for mod in args.models
                                                for L in args.seq_lens if upd] + online[1:]:
        if model == "online":  # mode: the update as a CUDA graph
            if "online" not in args.parts:
                continue
            for agent in ("s4wm_agent", "dreamer"):
                try:
                    row = bench_online(agent, args.device, args.threads, args.env_steps, mode)
                except Exception as e:
                    row = {"agent": agent, "cuda_graph": mode, "error": f"{type(e).__name__}: {e}"[:500]}
                rec["online"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(rec, indent=1))
            continue
        try:
            row = bench_update(model, mode, args.device, args.threads, args.warmup, args.timed, args.repeats, L,
                               args.batch)
        except Exception as e:  # report and go on: one failing setting must not hide the others
            row = {"model": model, "mode": mode, "asked_seq_len": L, "error": f"{type(e).__name__}: {e}"[:500]}
        rec["update"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(rec, indent=1))
    print("\n| model | " + " | ".join(args.modes) + " | eager / graph (bf16) |")
    print("|---" * (len(args.modes) + 2) + "|")
    for model in args.models:
        for L in args.seq_lens:
            rows = {r["mode"]: r for r in rec["update"] if r["model"] == model and r["asked_seq_len"] == L}
            cells = [f"{rows[m]['ms']:.2f} ms" if "ms" in rows.get(m, {}) else "error" for m in args.modes]
            ratio = (f"{rows['eager-bf16']['ms'] / rows['graph-bf16']['ms']:.1f}x"
                     if all("ms" in rows.get(m, {}) for m in ("eager-bf16", "graph-bf16")) else "")
            print(f"| {model}{f' L={L}' if L else ''} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
