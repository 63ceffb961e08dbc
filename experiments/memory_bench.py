"""Memory benchmark beyond the T-maze: GTrXL + PPO and our LSTM + PPO (agents/gtrxl.toml, agents/lstm_ppo.toml,
through the one Trainer on an env source, as `seqrl train --agent NAME --env TASK` builds it) against
sb3-contrib's RecurrentPPO at the same env-step budget, on

    repeat_previous:k=K   say the symbol seen K steps ago (seqrl/RepeatPrevious-v0, envs/repeat_previous.toml)
    count:k=K             K symbols shown, then say how often each queried one was (seqrl/Count-v0, envs/count.toml)
    autoencode:k=K        K symbols shown, then repeat them in order (seqrl/Autoencode-v0, envs/autoencode.toml)

A task is an env preset with `key=value` constructor arguments (`count:k=16:n_symbols=4`). Every method
trains for --steps env steps (each rounds up to whole collections of 16 envs x 128 steps) and is scored the
same way: the mean return of --eval-episodes episodes with deterministic actions on env seeds seed + 10000 + i
(`seqrl.runners.evaluate.evaluate`; RecurrentPPO through bench_online's adapter). Also reported: the
optimiser steps taken ("updates": minibatches) and the training wall time. RecurrentPPO runs on the same 16
envs with sb3-contrib's defaults otherwise (--sb3 defaults: 10 epochs of minibatches of 128 steps, 160
updates per 2,048 env steps, as agents/lstm_ppo.toml; agents/gtrxl.toml takes 64), with agents/lstm_ppo.toml's
PPO settings (--sb3 matched) or with one LSTM shared by actor and critic (--sb3 shared: CleanRL's layout; the
default gives the critic its own). Needs the `bench` extra (pip install -e '.[bench]', or pip install
sb3-contrib==2.9.2).

    python experiments/memory_bench.py run --seeds 0 1 2 --steps 200000              # every task x method x seed
    python experiments/memory_bench.py run --tasks count:k=8 --methods gtrxl --steps 50000
    python experiments/memory_bench.py run --methods lstm_ppo --set policy.epochs=10  # ours with preset overrides
    python experiments/memory_bench.py report                                         # the markdown table again

Each run writes one JSON file under --out (default docs/results/memory/per_run) and is skipped when that file
exists, so an interrupted sweep resumes where it stopped; `run` prints the table of everything under --out at
the end. One CPU thread per run by default (--threads); run several processes on disjoint --seeds or --tasks
to use more cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from math import comb
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_online  # noqa: E402  build_trainer / run_ours / run_sb3 / the RecurrentPPO adapter
from seqrl.presets import parse_overrides  # noqa: E402
from seqrl.runners.sources import resolve_env  # noqa: E402

METHODS = ("gtrxl", "lstm_ppo", "recurrent_ppo")
TASKS = ("repeat_previous:k=2", "repeat_previous:k=8", "repeat_previous:k=32", "count:k=8", "autoencode:k=4")
OUT = ROOT / "docs" / "results" / "memory" / "per_run"


def parse_task(spec: str) -> tuple[str, dict[str, int]]:
    """'count:k=8:n_symbols=3' -> ('count', {'k': 8, 'n_symbols': 3})."""
    name, *pairs = spec.split(":")
    kwargs = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise SystemExit(f"task {spec!r}: expected NAME:key=value:..., got {p!r}")
        kwargs[key] = int(value)
    return name, kwargs


def env_for(spec: str):
    name, kwargs = parse_task(spec)
    return resolve_env(name, {"env_kwargs": kwargs} if kwargs else {})


def reference_returns(env) -> tuple[float, float]:
    """(the best return of any memoryless policy, the optimum) at the env's kwargs, worked out from the rules."""
    kw = env.env_kwargs
    if env.env_id == "seqrl/RepeatPrevious-v0":  # 0/+1 per answer: chance accuracy 1/n
        return 1.0 / kw["n_symbols"], 1.0
    if env.env_id == "seqrl/Count-v0":  # the most likely count of Binomial(k, 1/n), -1/+1 per answer
        k, n = kw["k"], kw["n_symbols"]
        p = max(comb(k, c) * (1 / n) ** c * (1 - 1 / n) ** (k - c) for c in range(k + 1))
        return 2 * p - 1, 1.0
    if env.env_id == "seqrl/Autoencode-v0":  # any memoryless answer: right 1/n of the time, -1/+1 per answer
        return 2 / kw["n_symbols"] - 1, 1.0
    return float("nan"), float("nan")


def tag(spec: str, method: str, seed: int, steps: int, sb3: str, sets: list[str]) -> str:
    t = spec.replace(":", "_").replace("=", "")
    if method == "recurrent_ppo":
        method += f"-{sb3}"
    elif sets:  # a digest of the overrides keeps one file per variant
        method += "-" + hashlib.sha1(" ".join(sets).encode()).hexdigest()[:8]
    return f"{t}_{method}_{steps}_s{seed}"


def command_for(method: str, spec: str, steps: int, seed: int, over: list[str]) -> str:
    """The `seqrl train` command that trains what a run of ours trains (evaluated on the same seeds)."""
    name, kwargs = parse_task(spec)
    sets = [f"source.env_steps={steps}", f"trainer.seed={seed}", f"trainer.eval_episodes={bench_online.EVAL_EPISODES}"]
    sets += [f"env.env_kwargs.{k}={v}" for k, v in kwargs.items()] + list(over)
    return f"seqrl train --agent {method} --env {name} " + " ".join(f"--set {s}" for s in sets)


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench_online.EVAL_EPISODES = args.eval_episodes
    for spec in args.tasks:
        env = env_for(spec)
        for seed in args.seeds:
            for method in args.methods:
                path = out / f"{tag(spec, method, seed, args.steps, args.sb3, args.set)}.json"
                if path.exists():
                    continue
                torch.set_num_threads(args.threads)
                if method == "recurrent_ppo":
                    res = bench_online.run_sb3(env, args.steps, seed, args.device, args.sb3)
                    res["method"] = f"recurrent_ppo ({args.sb3})"
                else:
                    res = bench_online.run_ours(method, env, args.steps, seed, args.device, parse_overrides(args.set))
                    res |= {"method": " ".join([method, *args.set]), "overrides": args.set,
                            "command": command_for(method, spec, args.steps, seed, args.set)}
                res |= {"task": spec, "env_id": env.env_id, "env_kwargs": dict(env.env_kwargs), "seed": seed,
                        "budget": args.steps, "eval_episodes": args.eval_episodes, "device": args.device,
                        "threads": args.threads}
                bench_online.write_json(path, res)
                print(json.dumps(res), flush=True)
    report(args)


def fmt(xs: list[float]) -> str:
    return f"{np.mean(xs):.2f} ± {np.std(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def report(args) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    if not runs:
        raise SystemExit(f"no runs under {args.out}")
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["task"], r["budget"], r["method"]), []).append(r)
    order = lambda kv: (kv[0][0].split(":")[0], parse_task(kv[0][0])[1].get("k", 0), kv[0][1],  # noqa: E731
                        METHODS.index(kv[0][2].split(" ")[0]), kv[0][2])
    print("| task | env steps | method | eval return | success rate | memoryless best / optimum | updates | "
          "train wall time (s) | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (task, budget, method), rs in sorted(groups.items(), key=order):
        lo, hi = reference_returns(env_for(task))
        succ = [r["success_rate"] for r in rs if r.get("success_rate") is not None]
        print(f"| {task} | {rs[0]['env_steps']:,} | {method} | {fmt([r['return_mean'] for r in rs])} | "
              f"{fmt(succ) if succ else 'n/a'} | {lo:.2f} / {hi:.2f} | {int(np.mean([r['updates'] for r in rs])):,} | "
              f"{fmt([r['train_s'] for r in rs])} | {len(rs)} |")
    print(f"\neval return: mean over seeds (± std when several) of the mean return of {runs[0]['eval_episodes']} "
          f"deterministic episodes on env seeds seed+10000+i; updates: optimiser steps (minibatches)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["run", "report"])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="NAME[:key=value...] (an env preset and its "
                    "constructor arguments); default: %(default)s")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200_000, help="env steps per run, every method")
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value of our presets (repeatable), e.g. policy.epochs=10; not RecurrentPPO's")
    ap.add_argument("--sb3", choices=["defaults", "matched", "shared"], default="defaults",
                    help="RecurrentPPO's settings: sb3-contrib's defaults, our presets' PPO settings, or the defaults "
                    "with one LSTM shared by actor and critic")
    ap.add_argument("--out", default=str(OUT), help="folder of the per-run JSON files (present ones are skipped)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    args = ap.parse_args()
    if args.what == "run":
        for spec in args.tasks:  # a bad task fails here, before any run starts
            env_for(spec)
        run(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
