"""The D4RL-style learner of `seqrl collect` (SAC, seqrl.data.sac.GraphSAC) under a wall-clock budget, one
process per env in parallel, then every checkpoint rated: its learning curve in normalised score.

    python experiments/sac_learner.py --envs hopper halfcheetah walker2d --seconds 900 --workdir /tmp/sac \
        --set collect.train_envs=8 --out sac_learner.json

Training is `seqrl.data.sb3.train` (what `seqrl collect` runs), stopped with SIGINT after `--seconds` (a finished
training stops sooner; a SIGINT to this process ends the budget early); checkpoints every
`collect.checkpoint_every` env steps survive the cut, and a rerun resumes from the newest. Rating is
`seqrl.data.sb3.medium_step`'s (deterministic episodes of each checkpoint, `collect.checkpoint_eval_episodes` of
them, cached in evals.json), on the CPU, one process per env; the datasets of that learner are then
`seqrl collect --env ENV --quality Q --set collect.train_steps=LAST_STEP`.
`--rate-only` rates what exists without training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from seqrl.io import atomic_write_json


def preset(name: str, sets: list[str], train_steps: int | None = None):
    from seqrl.presets import load_env, parse_overrides

    last = [] if train_steps is None else [f"collect.train_steps={train_steps}"]
    return load_env(name, parse_overrides([*sets, *last]))


def rate(name: str, workdir: Path, sets: list[str]) -> dict:
    """Rate every checkpoint of env `name` (CPU); {step: normalised score}, plus the raw returns."""
    from seqrl.data.sb3 import _checkpoints, _evals, medium_step, run_folder
    from seqrl.runners.evaluate import normalized_score

    env = preset(name, sets)
    run = run_folder(env, 0, workdir / name)
    steps = sorted(_checkpoints(run))
    if not steps:
        return {"env": name, "steps": [], "returns": [], "normalised": []}
    env = preset(name, sets, train_steps=steps[-1])
    medium_step(env, 0, run)  # rates every checkpoint up to the last, cached in evals.json
    evals = _evals(run)
    returns = [evals[s] for s in steps]
    norm = normalized_score(returns, (env.ref_min_score, env.ref_max_score)).tolist()
    return {"env": name, "steps": steps, "returns": returns, "normalised": norm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=["hopper", "halfcheetah", "walker2d"])
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--workdir", type=Path, default=Path("runs/sac_learner"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default="sac_learner.json")
    ap.add_argument("--rate-only", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: train this env in this process
    ap.add_argument("--rate-one", help=argparse.SUPPRESS)  # internal: rate this env's checkpoints, print JSON
    a = ap.parse_args()
    if a.rate_one:
        print(json.dumps(rate(a.rate_one, a.workdir, a.sets)))
        return
    if a.one:
        from seqrl.data.sb3 import train

        # a process started in the background by a shell inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt for it: take it back, so that the budget's SIGINT stops training between steps
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            train(preset(a.one, a.sets), 0, a.workdir / a.one)
        except KeyboardInterrupt:
            print(f"{a.one}: stopped at the budget", flush=True)
        return
    t0 = time.time()
    sets = [x for s in a.sets for x in ("--set", s)]  # the children's command line
    if not a.rate_only:
        a.workdir.mkdir(parents=True, exist_ok=True)
        procs = {e: subprocess.Popen([sys.executable, __file__, "--one", e, "--workdir", str(a.workdir), *sets],
                                     stdout=open(a.workdir / f"train_{e}.log", "w"), stderr=subprocess.STDOUT)
                 for e in a.envs}
        deadline = t0 + a.seconds
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in the children (see --one)
        try:
            for p in procs.values():
                try:
                    p.wait(timeout=max(deadline - time.time(), 0))
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:  # a SIGINT to this process alone ends the budget now: stop, then rate
            print("interrupted: stopping the training processes", flush=True)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:  # checkpoints are written atomically: a kill loses no finished one
                p.kill()
                p.wait()
    train_s = time.time() - t0
    cpu = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    raters = {e: subprocess.Popen([sys.executable, __file__, "--rate-one", e, "--workdir", str(a.workdir), *sets],
                                  env=cpu, stdout=subprocess.PIPE, text=True)
              for e in a.envs}
    curves = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in raters.values()]
    for c in curves:
        print(f"\n{c['env']}: step -> return (normalised)")
        for s, r, n in zip(c["steps"], c["returns"], c["normalised"]):
            print(f"  {s:>8d}  {r:9.1f}  ({n:5.1f})")
    atomic_write_json(a.out, {"command": sys.argv, "train_seconds": train_s, "rate_seconds": time.time() - t0 - train_s,
                              "curves": curves})


if __name__ == "__main__":
    main()
