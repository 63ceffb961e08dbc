"""Offline agents side by side over seeds: normalised score, mean ± std over seeds of each run's mean.

    python experiments/offline_table.py --device cuda                    # Pendulum quickstart data
    python experiments/offline_table.py --dataset seqrl/hopper/medium-v0 --env hopper \
        --agents dt,dm,bc --device cuda                                  # a `seqrl collect` dataset

Each row is one agent preset (with optional `--set`-style overrides after a colon, e.g.
"dm_small:policy.pser=false" for Decision Mamba without self-evolution), trained with
`seqrl train` for every seed and evaluated on 50 episodes per target return.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seqrl.cli import train_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=None, help="Minari id (default: the Pendulum quickstart dataset, built here)")
    ap.add_argument("--env", default="pendulum")
    ap.add_argument("--agents", default="dt_small,dm_small,dm_small:policy.pser=false")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/offline_table")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    dataset = args.dataset
    if dataset is None:
        from seqrl.data.collect import collect
        from seqrl.presets import load_env

        env = load_env(args.env)
        dataset = env.dataset_id("mixed")
        collect(env, "mixed")
    rows, raw = [], []
    for spec in args.agents.split(","):
        agent, _, extra = spec.partition(":")
        overrides = [o for o in extra.split(";") if o]
        per_seed, secs = [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            t = time.perf_counter()
            run_dir = Path(args.out) / dataset.replace("/", "_") / spec.replace(":", "_").replace("=", "-") / f"seed{seed}"
            _, results = train_run(agent, dataset, args.env, overrides + [
                f"runner.seed={seed}", f"runner.eval_episodes={args.episodes}", "runner.eval_every=0"],
                run_dir, resume=False, device=args.device)
            secs.append(time.perf_counter() - t)
            per_seed.append({k: v["score_mean"] for k, v in results.items()})
            print(spec, seed, per_seed[-1], f"{secs[-1]:.0f}s", flush=True)
            raw.append(dict(agent=spec, seed=seed, seconds=secs[-1], results=results))
            if args.json:  # after every run, so a cut-off job keeps what it finished
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(dict(dataset=dataset, device=args.device, raw=raw), indent=1))
        for label in per_seed[0]:
            scores = np.array([s[label] for s in per_seed])
            rows.append(dict(agent=spec, condition=label, mean=float(scores.mean()), std=float(scores.std()),
                             seeds=scores.tolist(), seconds_per_run=float(np.mean(secs))))
    print(f"\n{dataset}, normalised score, mean ± std over seeds ({args.seeds}), {args.episodes} episodes each")
    for r in rows:
        print(f"{r['agent']:32} {r['condition']:16} {r['mean']:6.1f} ± {r['std']:5.1f}   "
              f"seeds {', '.join(f'{v:.1f}' for v in r['seeds'])}   {r['seconds_per_run']:.0f} s/run")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(dataset=dataset, device=args.device, rows=rows, raw=raw), indent=1))


if __name__ == "__main__":
    main()
