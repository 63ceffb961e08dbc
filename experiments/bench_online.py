"""Online benchmarks: GTrXL + PPO, our LSTM + PPO and sb3-contrib's RecurrentPPO on the same envs and
env-step budgets. Needs the `bench` extra (sb3-contrib, matplotlib).

    python experiments/bench_online.py memory --lengths 10 30 100 --seeds 0 1 2    # success vs memory length
    python experiments/bench_online.py cartpole --seeds 0 1 2                       # reactive control
    python experiments/bench_online.py throughput [--device cuda]                   # training env-steps/s
    python experiments/bench_online.py report                                       # table + PNG from the runs

Every run writes one JSON file under docs/results/online/per_run/ and is skipped when that file exists, so
an interrupted sweep resumes where it stopped. Evaluation: 100 episodes with deterministic actions
through `seqrl.runners.evaluate.evaluate` for all three methods (RecurrentPPO through a small adapter).
Ours run the agents/gtrxl.toml and agents/lstm_ppo.toml presets through the one Trainer (env source), on
16 envs; RecurrentPPO runs on the same envs with the PPO settings and LSTM layout of agents/lstm_ppo.toml
(`matched_settings`). (experiments/memory_bench.py reuses these pieces, with RecurrentPPO also at
sb3-contrib's own defaults.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl.io import atomic_write  # noqa: E402
from seqrl.runners.evaluate import evaluate  # noqa: E402
from seqrl.runners.sources import resolve_env  # noqa: E402

OUT = ROOT / "docs" / "results" / "online"
METHODS = ("gtrxl", "lstm_ppo", "recurrent_ppo")
N_ENVS = 16
EVAL_EPISODES = 100


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def env_preset(task: str, length: int | None):
    if task == "tmaze":
        return resolve_env("tmaze", {"env_kwargs": {"length": length}})
    return resolve_env("cartpole", {})


# ------------------------------------------------------------------------------------------- ours
def build_trainer(method: str, env, steps: int, seed: int, device: str, run_dir: Path, over: dict | None = None):
    """The preset `method` (agents/gtrxl.toml, agents/lstm_ppo.toml) through the one Trainer on an env source;
    `over`: more preset overrides, nested as `parse_overrides` gives them ({"policy": {"epochs": 10}})."""
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.presets import load_agent, merge
    from seqrl.runners.sources import EnvSource
    from seqrl.runners.trainer import Trainer

    base = {"source": {"env_steps": steps, "n_envs": N_ENVS},
            "trainer": {"seed": seed, "device": device, "eval_episodes": EVAL_EPISODES, "checkpoint_every": 0}}
    preset = load_agent(method, merge(over or {}, base))
    torch.manual_seed(seed)
    policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_env(env))
    return Trainer(policy, EnvSource(preset.source, env), preset, run_dir)


def run_ours(method: str, env, steps: int, seed: int, device: str, over: dict | None = None) -> dict:
    """Train, then evaluate EVAL_EPISODES episodes with deterministic actions on env seeds seed + 10000 + i.
    `updates`: optimiser steps (minibatches) taken; `train_s`: training alone, `wall_s`: with evaluation."""
    with tempfile.TemporaryDirectory() as tmp:
        t = build_trainer(method, env, steps, seed, device, Path(tmp), over)
        t0 = time.perf_counter()
        while not t.done():  # what Trainer.run does, without its logging, so that training alone is timed
            t.iteration()
        train_s = time.perf_counter() - t0
        res = t.evaluate()[""]
        wall = time.perf_counter() - t0
        t.source.close()
        t.writer.close()
    return {"success_rate": res.get("success_rate"), "return_mean": res["return_mean"], "return_std": res["return_std"],
            "wall_s": wall, "train_s": train_s, "train_env_steps_per_s": t.source.env_steps / train_s,
            "env_steps": t.source.env_steps, "updates": t.step}


# ------------------------------------------------------------------------------------- sb3-contrib
class SB3Recurrent:
    """seqrl's acting contract over a RecurrentPPO model, so `evaluate()` runs it like our policies."""

    def __init__(self, model):
        self.model = model

    def initial_state(self, n_envs, device):
        return None, np.ones(n_envs, bool)

    def act(self, obs, state):
        lstm, start = state
        action, lstm = self.model.predict(obs.cpu().numpy(), state=lstm, episode_start=start, deterministic=True)
        return torch.as_tensor(action), (lstm, np.zeros_like(start))

    def observe(self, state, reward, done):
        return state[0], done.cpu().numpy()


def recurrent_ppo(env, seed: int, device: str, settings: str = "matched"):
    """sb3-contrib's RecurrentPPO on N_ENVS envs. settings "matched": `matched_settings()`; "defaults":
    sb3-contrib's own defaults for everything else (128 steps per env, minibatches of 128 steps, 10 epochs, no
    entropy bonus, LSTM of 256 units, and a second LSTM for the critic); "shared": the defaults with one LSTM
    for actor and critic, as CleanRL has it."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(env.env_id, n_envs=N_ENVS, seed=seed, env_kwargs=dict(env.env_kwargs))
    if settings in ("defaults", "shared"):
        shared = dict(shared_lstm=True, enable_critic_lstm=False) if settings == "shared" else {}
        return RecurrentPPO("MlpLstmPolicy", venv, policy_kwargs=shared, seed=seed, device=device, verbose=0)
    if settings != "matched":
        raise ValueError(f"RecurrentPPO settings must be 'matched', 'defaults' or 'shared', got {settings!r}")
    return RecurrentPPO("MlpLstmPolicy", venv, **matched_settings(), seed=seed, device=device, verbose=0)


def matched_settings() -> dict:
    """RecurrentPPO's arguments for the PPO settings and LSTM layout of agents/lstm_ppo.toml: steps per env,
    minibatch size (our minibatches are whole sequences of n_steps, so a collection over `minibatches`),
    epochs, optimiser, GAE, ratio clipping, loss weights, LSTM width and layers, one LSTM or one per head
    (not our value clipping: SB3's clips differently, so it stays off as in its defaults)."""
    from seqrl.presets import load_agent

    p = load_agent("lstm_ppo")
    pol, n_steps, tr = p.policy, p.source.n_steps, p.trainer
    return dict(n_steps=n_steps, batch_size=N_ENVS * n_steps // pol.minibatches, n_epochs=pol.epochs,
                learning_rate=tr.lr, gamma=pol.gamma, gae_lambda=pol.gae_lambda, clip_range=pol.clip_coef,
                ent_coef=pol.ent_coef, vf_coef=pol.vf_coef, max_grad_norm=tr.grad_clip,
                policy_kwargs=dict(lstm_hidden_size=pol.d_model, n_lstm_layers=pol.lstm.n_layers,
                                   shared_lstm=not pol.separate_critic, enable_critic_lstm=pol.separate_critic))


def count_updates(model) -> list[int]:
    """Count the optimiser steps (minibatches) a SB3 model takes from now on: returns a one-item list."""
    count, step = [0], model.policy.optimizer.step

    def counted(*args, **kwargs):
        count[0] += 1
        return step(*args, **kwargs)

    model.policy.optimizer.step = counted
    return count


def run_sb3(env, steps: int, seed: int, device: str, settings: str = "matched") -> dict:
    """Train, then evaluate as `run_ours` does (same episodes, same env seeds, deterministic actions)."""
    model = recurrent_ppo(env, seed, device, settings)
    updates = count_updates(model)
    t0 = time.perf_counter()
    model.learn(steps)
    train_s = time.perf_counter() - t0
    res = evaluate(SB3Recurrent(model), env, EVAL_EPISODES, seed=seed + 10_000).summary()
    return {"success_rate": res.get("success_rate"), "return_mean": res["return_mean"], "return_std": res["return_std"],
            "wall_s": time.perf_counter() - t0, "train_s": train_s,
            "train_env_steps_per_s": model.num_timesteps / train_s, "env_steps": model.num_timesteps,
            "updates": updates[0], "settings": settings}


# ------------------------------------------------------------------------------------------ sweeps
def sweep(task: str, methods, lengths, seeds, steps_for, device: str, gtrxl_memory: int | None = None,
          runs_dir: str = "per_run") -> None:
    for length in lengths:
        env = env_preset(task, length)
        steps = steps_for(length)
        for seed in seeds:
            for method in methods:
                tag = f"{task}_{method}_L{length}_s{seed}" if task == "tmaze" else f"{task}_{method}_s{seed}"
                path = OUT / runs_dir / f"{tag}.json"
                if path.exists():
                    continue
                over = {"gtrxl": {"memory": gtrxl_memory}} if method == "gtrxl" and gtrxl_memory else {}
                out = (run_sb3(env, steps, seed, device) if method == "recurrent_ppo"
                       else run_ours(method, env, steps, seed, device, {"policy": over}))
                out |= {"task": task, "method": method, "length": length, "seed": seed, "budget": steps, "device": device,
                        "policy_overrides": over}
                write_json(path, out)
                print(json.dumps(out), flush=True)


def throughput(device: str, updates: int) -> None:
    """Training env-steps/s (collection + PPO update) on TMaze length 50, after one warm-up update."""
    env = env_preset("tmaze", 50)
    batch = N_ENVS * matched_settings()["n_steps"]  # both presets and RecurrentPPO collect 128 steps per env
    rows = {}
    for method in ("gtrxl", "lstm_ppo"):
        with tempfile.TemporaryDirectory() as tmp:
            t = build_trainer(method, env, batch * (updates + 1), 0, device, Path(tmp))
            t.iteration()  # warm-up: one collection and its PPO updates
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(updates):
                t.iteration()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            rows[method] = batch * updates / (time.perf_counter() - t0)
            t.source.close()
        print(f"{method}: {rows[method]:.0f} env-steps/s", flush=True)
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:  # said out loud and recorded, never skipped silently
        rows["recurrent_ppo"] = None
        print("recurrent_ppo: skipped, sb3-contrib is not installed (pip install -e '.[bench]')", flush=True)
    else:
        model = recurrent_ppo(env, 0, device)
        model.learn(batch)  # warm-up
        t0 = time.perf_counter()
        model.learn(batch * updates, reset_num_timesteps=False)
        rows["recurrent_ppo"] = batch * updates / (time.perf_counter() - t0)
        print(f"recurrent_ppo: {rows['recurrent_ppo']:.0f} env-steps/s", flush=True)
    name = ("cpu" if device == "cpu" else device.replace(":", "")) + f"_{N_ENVS}envs"
    info = {"device": device, "torch_threads": torch.get_num_threads(), "task": "TMaze length 50",
            "n_envs": N_ENVS, "env_steps_per_update": batch, "timed_updates": updates, "env_steps_per_s": rows,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    write_json(OUT / f"throughput_{name}.json", info)


# ------------------------------------------------------------------------------------------ report
def report() -> None:
    runs = [json.loads(p.read_text()) for p in sorted((OUT / "per_run").glob("*.json"))]
    table: dict = {}
    for r in runs:
        key = (r["task"], r["length"] if r["task"] == "tmaze" else None, r["method"])
        table.setdefault(key, []).append(r)
    summary = []
    # the sweeps ran beside other jobs: their wall-clock rates stay in the JSON, `throughput` measures speed
    print("| task | memory length | budget (env steps) | method | success rate (mean ± std over seeds) | return | seeds |")
    print("|---|---|---|---|---|---|---|")
    for (task, length, method), rs in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, METHODS.index(kv[0][2]))):
        succ = [r["success_rate"] for r in rs if r["success_rate"] is not None]
        ret = [r["return_mean"] for r in rs]
        row = {"task": task, "length": length, "method": method, "budget": rs[0]["budget"], "seeds": [r["seed"] for r in rs],
               "success_rate": succ, "return_mean": ret, "train_env_steps_per_s": float(np.mean([r["train_env_steps_per_s"] for r in rs]))}
        summary.append(row)
        s = f"{np.mean(succ):.2f} ± {np.std(succ):.2f}" if succ else "n/a"
        print(f"| {task} | {length or '-'} | {rs[0]['budget']:,} | {method} | {s} | {np.mean(ret):.2f} ± {np.std(ret):.2f} | "
              f"{len(rs)} |")
    write_json(OUT / "summary.json", summary)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method in METHODS:
        rows = sorted((r for r in summary if r["task"] == "tmaze" and r["method"] == method), key=lambda r: r["length"])
        if not rows:
            continue
        x = [r["length"] for r in rows]
        m = [np.mean(r["success_rate"]) for r in rows]
        sd = [np.std(r["success_rate"]) for r in rows]
        ax.errorbar(x, m, yerr=sd, marker="o", capsize=3, label=method)
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="memoryless (0.5)")
    ax.set_xscale("log")
    ax.set_xlabel("T-maze corridor length (steps between cue and choice)")
    ax.set_ylabel("success rate (100 eval episodes)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("seqrl/TMaze-v0: mean ± std over 3 seeds")
    fig.tight_layout()
    fig.savefig(OUT / "tmaze_success.png", dpi=120)
    print(f"wrote {OUT / 'summary.json'} and {OUT / 'tmaze_success.png'}")


def main() -> None:
    global N_ENVS  # throughput's --n-envs
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "cartpole", "throughput", "report"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--lengths", nargs="+", type=int, default=[10, 30, 100])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", nargs="+", default=["10:50000", "30:60000", "100:150000"],
                    help="memory: LENGTH:ENV_STEPS per length; cartpole: one number")
    ap.add_argument("--updates", type=int, default=8, help="throughput: timed PPO updates (n_envs x 128 env steps each)")
    ap.add_argument("--n-envs", type=int, default=16, help="throughput: parallel envs (a multiple of 4)")
    ap.add_argument("--gtrxl-memory", type=int, default=None,
                    help="memory: override the gtrxl preset's policy.gtrxl.memory (it must reach back the corridor length)")
    ap.add_argument("--runs-dir", default="per_run", help="memory/cartpole: folder under docs/results/online for the "
                    "run files (`report` reads per_run/; use another for side experiments such as larger budgets)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "memory":
        budget = dict(b.split(":") for b in args.budget)
        sweep("tmaze", args.methods, args.lengths, args.seeds, lambda L: int(budget[str(L)]), args.device, args.gtrxl_memory,
              args.runs_dir)
    elif args.what == "cartpole":
        steps = int(args.budget[0]) if ":" not in args.budget[0] else 100_000
        sweep("cartpole", args.methods, [0], args.seeds, lambda _: steps, args.device, runs_dir=args.runs_dir)
    elif args.what == "throughput":
        N_ENVS = args.n_envs
        throughput(args.device, args.updates)
    else:
        report()


if __name__ == "__main__":
    main()
