"""Training updates per second through seqrl's trainer, this checkout against another (e.g. the main before
a change), in one run: DT (agents/dt.toml: width 128, 3 layers, context 20, batch 64) and Decision Mamba
at DT's size (width 128, 3 layers, context 20, batch 64), each with the trainer's defaults on the device
(CUDA: bf16 autocast and the whole update as one CUDA graph) and eagerly (`cuda_graph=false`).

Each (checkout, agent, mode) runs in its own process (two seqrl packages cannot share one), on the same
synthetic Hopper-shaped store (obs 11, actions 3, 200 episodes of 1,000 steps); the checkouts alternate,
`--repeats` times. Per process: `--warmup` updates, then `--timed` updates between two synchronisations;
the table gives the median over processes of updates/s and the ratio this / other.

    git worktree add /tmp/before <commit>      # or any copy of another checkout
    python experiments/bench_trainer.py --other /tmp/before --device cuda --out docs/results/bench_trainer.json

A checkout from before the one Trainer (seqrl.runners.offline.OfflineRunner) is driven through its own API.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
AGENTS = {"dt": ("dt", {}), "dm": ("dm", {"embed_dim": 128, "n_layers": 3, "pser_steps": 100_000})}


def worker(root: str, agent: str, mode: str, device: str, warmup: int, timed: int) -> dict:
    sys.path.insert(0, root)
    import gymnasium as gym
    import numpy as np
    import torch

    import seqrl
    from seqrl.data.store import ReplayStore
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.presets import load_agent, load_env

    assert Path(seqrl.__file__).resolve().is_relative_to(Path(root).resolve()), seqrl.__file__
    rng = np.random.default_rng(0)
    T, E = 1000, 200
    eps = [{"obs": rng.standard_normal((T + 1, 11), dtype=np.float32), "act": rng.uniform(-1, 1, (T, 3)).astype(np.float32),
            "rew": rng.standard_normal(T).astype(np.float32), "term": np.zeros(T, bool), "trunc": np.eye(T, dtype=bool)[-1]}
           for _ in range(E)]
    store = ReplayStore.from_episodes(eps, gym.spaces.Box(-np.inf, np.inf, (11,), np.float32),
                                      gym.spaces.Box(-1.0, 1.0, (3,), np.float32), meta={"dataset_id": "bench/hopper-like"})
    env = load_env("hopper")
    name, policy_over = AGENTS[agent]
    train = {"device": device, "eval_episodes": 0, "checkpoint_every": 0, "cuda_graph": mode == "graph",
             "steps": 1_000_000}
    torch.manual_seed(0)
    run_dir = tempfile.mkdtemp()
    try:
        from seqrl.runners.sources import DatasetSource
        from seqrl.runners.trainer import Trainer

        preset = load_agent(name, {"policy": policy_over, "source": {"batch_size": 64}, "trainer": train})
        policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env))
        t = Trainer(policy, DatasetSource(preset.source, store), preset, run_dir)
        step, api = t.iteration, "Trainer"
    except ImportError:  # a checkout from before the one Trainer
        from seqrl.runners.offline import OfflineRunner

        preset = load_agent(name, {"policy": policy_over, "runner": train | {"batch_size": 64}})
        policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env))
        t = OfflineRunner(policy, store, preset, run_dir)
        step, api = t.update, "OfflineRunner"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(timed):
        step()
    sync()
    rate = timed / (time.perf_counter() - t0)
    return {"root": root, "api": api, "agent": agent, "mode": mode, "device": device, "updates_per_s": rate,
            "graph": bool(t.use_graph), "amp": bool(t.amp), "warmup": warmup, "timed": timed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", help="the other checkout's root (its seqrl/, agents/, envs/)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--agents", nargs="+", default=list(AGENTS))
    ap.add_argument("--modes", nargs="+", default=["graph", "eager"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--timed", type=int, default=300)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=3, metavar=("ROOT", "AGENT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.device, args.warmup, args.timed)))
        return
    if not args.other:
        ap.error("--other is required")
    roots = {"this": str(HERE), "other": str(Path(args.other).resolve())}
    rows = []
    for agent in args.agents:
        for mode in args.modes:
            for rep in range(args.repeats):
                for label, root in roots.items():
                    cmd = [sys.executable, __file__, "--worker", root, agent, mode, "--device", args.device,
                           "--warmup", str(args.warmup), "--timed", str(args.timed)]
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
                    if out.returncode:
                        raise SystemExit(f"{label} {agent} {mode} failed:\n{out.stderr[-3000:]}")
                    rec = json.loads(out.stdout.strip().splitlines()[-1]) | {"checkout": label, "repeat": rep}
                    rows.append(rec)
                    print(f"{label:5s} {agent} {mode:5s} {rec['updates_per_s']:9.1f} updates/s ({rec['api']})", flush=True)
    print("\n| agent | mode | this (updates/s) | other (updates/s) | this / other |\n|---|---|---|---|---|")
    summary = []
    for agent in args.agents:
        for mode in args.modes:
            med = {c: statistics.median(r["updates_per_s"] for r in rows if (r["agent"], r["mode"], r["checkout"]) ==
                                        (agent, mode, c)) for c in roots}
            summary.append({"agent": agent, "mode": mode, **{f"{c}_updates_per_s": v for c, v in med.items()},
                            "ratio": med["this"] / med["other"]})
            print(f"| {agent} | {mode} | {med['this']:.1f} | {med['other']:.1f} | {med['this'] / med['other']:.3f} |")
    if args.out:
        import torch

        info = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup, "timed": args.timed,
                "other": roots["other"], "date": time.strftime("%Y-%m-%d")}
        Path(args.out).write_text(json.dumps({"info": info, "summary": summary, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
