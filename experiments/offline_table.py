"""Offline agents side by side over datasets and seeds: normalised score, mean ± std over seeds.

    python experiments/offline_table.py --device cuda          # Pendulum quickstart data, small presets
    python experiments/offline_table.py --device cuda --workers 8 --out runs/d4rl \
        --group seqrl/hopper/medium-v0,seqrl/hopper/medium-replay-v0 dt,bc \
        --group seqrl/hopper/medium-replay-v0 "dm-noSE=dm:policy.pser=false"

A group is (comma-separated Minari ids, comma-separated agent specs); every dataset of a group is run
with every agent of it, for every seed. An agent spec is `[LABEL=]PRESET[:KEY=VALUE;KEY=VALUE...]`
(`--set`-style overrides, e.g. `dm_small:policy.pser=false`). Each run is `seqrl train` (training then
evaluation over `--episodes` episodes per target return) in its own process; `--workers` run at once.
DT and DM runs are then also acted in the `policy.act_mode` their preset does not use ("window" for
dt.toml's "stream", "stream" for dm.toml's "window") at the first target, on the same env seeds: the
condition "target=... MODE". The table gives each condition's env steps per second (the evaluation's vector
env included).

The agent `d3rlpy_dt` is d3rlpy 2.8.1's DecisionTransformer at the paper's size
(experiments/d3rlpy_dt_score.py), in its own interpreter with `--d3rlpy-site` as PYTHONPATH: the dataset
exported once to OUT/_d3rlpy/*.npz (experiments/export_d3rlpy.py), the same seed, the same evaluation env
seeds as seqrl's trainer (seed + 10,000 + episode), the env preset's first target return; its overrides
are trainer.steps, trainer.warmup_steps and source.batch_size (defaults: 100,000, 10,000, 64, as dt.toml).

Every run writes OUT/<dataset>/<label>/seed<k>/result.json when it ends. A rerun skips runs that have
one and resumes runs that left a checkpoint, so the table can be built in pieces (a cut-off GPU lease,
say); `--start-within SECONDS` starts no run after that time, so that a lease of known length ends with the
runs it started finished. `--report` prints and saves the table of everything under OUT without training.
`--from JSON` (an earlier `--json` output) counts that table's runs as done, so a later lease adds seeds or
agents to it and reports them all together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from seqrl.io import atomic_write_json

# Decision Transformer, Chen et al. 2021, Table 2 (D4RL v2 Gym data: theirs, not ours)
PUBLISHED_DT = {
    ("hopper", "medium"): 67.6, ("halfcheetah", "medium"): 42.6, ("walker2d", "medium"): 74.0,
    ("hopper", "medium-replay"): 82.7, ("halfcheetah", "medium-replay"): 36.6, ("walker2d", "medium-replay"): 66.6,
    ("hopper", "medium-expert"): 107.6, ("halfcheetah", "medium-expert"): 86.8, ("walker2d", "medium-expert"): 108.1,
}


D3RLPY = "d3rlpy_dt"
D3RLPY_OPTIONS = {"trainer.steps": "--steps", "trainer.warmup_steps": "--warmup", "source.batch_size": "--batch"}
HERE = Path(__file__).resolve().parent


def parse_spec(spec: str) -> tuple[str, str, list[str]]:
    """'[LABEL=]PRESET[:K=V;K=V]' -> (label, preset, overrides); the label defaults to the spec itself."""
    label, sep, rest = spec.partition("=")
    if not sep or ":" in label:  # no label given: the '=' belonged to an override
        label, rest = spec, spec
    agent, _, extra = rest.partition(":")
    return label, agent, [o for o in extra.split(";") if o]


def run_dir(out: Path, dataset: str, label: str, seed: int) -> Path:
    safe = label.replace(":", "_").replace("=", "-").replace(";", "_")
    return out / dataset.replace("/", "_") / safe / f"seed{seed}"


def export_path(out: Path, dataset: str) -> Path:
    return out / "_d3rlpy" / (dataset.replace("/", "_") + ".npz")


def export_for_d3rlpy(out: Path, dataset: str) -> None:
    """The dataset as d3rlpy's flat arrays, once per OUT (written under a temporary name, then moved)."""
    from export_d3rlpy import main as export

    path = export_path(out, dataset)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        export(dataset, str(tmp))
        os.replace(tmp, path)


def d3rlpy_results(dataset: str, overrides: list[str], seed: int, episodes: int, device: str, out: Path,
                   folder: Path, threads: int, site: str) -> dict:
    """One d3rlpy run (module doc); {condition: summary} as seqrl's trainer reports it."""
    from seqrl.presets import find_env_for_dataset

    args = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in D3RLPY_OPTIONS:
            raise ValueError(f"{D3RLPY}: override {key!r} is not one of {list(D3RLPY_OPTIONS)}")
        args += [D3RLPY_OPTIONS[key], value]
    target = find_env_for_dataset(dataset).target_returns[0]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / "d3rlpy_dt_score.py"), "--data", str(export_path(out, dataset)), "--seed", str(seed),
         "--device", device, "--episodes", str(episodes), "--target-return", str(target),
         "--eval-seed-base", str(seed + 10_000), "--out", str(folder / "d3rlpy.json"), *args],
        env=dict(os.environ, PYTHONPATH=site, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"d3rlpy_dt_score.py exited {proc.returncode}: {proc.stderr[-2000:]}")
    r = json.loads((folder / "d3rlpy.json").read_text())
    return {f"target={target:g}": {
        "return_mean": r["mean_return"], "return_std": r["std_return"], "length_mean": float(np.mean(r["lengths"])),
        "score_mean": r["mean_normalized"], "score_std": float(np.std(r["normalized"]))}}


def one_run(dataset: str, spec: str, seed: int, episodes: int, device: str, out: str, threads: int,
            start_by: float = float("inf"), d3rlpy_site: str = "") -> dict | None:
    """Train and evaluate one (dataset, agent, seed); runs in a worker process of its own. None, and nothing
    done, if its turn comes after `start_by` (time.time())."""
    if time.time() > start_by:
        return None
    label, agent, overrides = parse_spec(spec)
    folder = run_dir(Path(out), dataset, label, seed)
    t = time.perf_counter()
    if agent == D3RLPY:
        results = d3rlpy_results(dataset, overrides, seed, episodes, device, Path(out), folder, threads, d3rlpy_site)
    else:
        import torch

        from seqrl.cli import train_run

        torch.set_num_threads(threads)
        _, results, _ = train_run(agent, dataset, None, overrides + [
            f"trainer.seed={seed}", f"trainer.eval_episodes={episodes}", "trainer.eval_every=0"],
            folder, resume=(folder / "checkpoint.pt").is_file(), device=device)
        results |= other_act_mode(folder / "checkpoint.pt", episodes, seed, device)
    record = dict(dataset=dataset, label=label, spec=spec, seed=seed, device=device,
                  seconds=time.perf_counter() - t, results=results)
    atomic_write_json(folder / "result.json", record)
    return record


def other_act_mode(checkpoint: Path, episodes: int, seed: int, device: str) -> dict:
    """DT and DM act in two modes (stream, window) with the same weights: the checkpoint acted in the mode it
    was not evaluated in, at the first condition (the highest target), on the trainer's evaluation env seeds
    (seed + 10,000 + i). {"LABEL MODE": summary}, or {} for an agent with one mode."""
    from seqrl.checkpoint import policy_from_checkpoint
    from seqrl.policies.dt import set_act_mode
    from seqrl.presets import training_device
    from seqrl.runners.evaluate import evaluate

    dev = training_device(device)
    policy, _, _ = policy_from_checkpoint(checkpoint, device=dev)
    if not hasattr(policy.config, "act_mode"):
        return {}
    other = "window" if policy.config.act_mode == "stream" else "stream"
    set_act_mode(policy, other)
    proto = policy.eval_protocol()
    label, cond = proto.conditions[0]
    res = evaluate(policy, policy.spec.env, episodes, seed + 10_000, dev, cond, policy.spec.ref_scores, proto.episodes)
    return {f"{label} {other}".strip(): res.summary()}


def collect_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/*/seed*/result.json"))]


def report(records: list[dict]) -> str:
    """Markdown: one row per (dataset, agent), the first condition (the highest target return) as the
    headline, every condition in the detail lines; the published DT score where one exists."""
    from seqrl.presets import find_env_for_dataset

    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_key.setdefault((r["dataset"], r["label"]), []).append(r)
    lines = ["| dataset | agent | score (first target) | seeds | every condition | s/run | DT, published |",
             "|---|---|---:|---|---|---:|---:|"]
    for (dataset, label), runs in by_key.items():
        runs.sort(key=lambda r: r["seed"])
        conds = [c for c in runs[0]["results"] if all(c in r["results"] for r in runs)]
        per = {c: np.array([r["results"][c]["score_mean"] for r in runs]) for c in conds}
        head = per[conds[0]]
        env = find_env_for_dataset(dataset)
        quality = dataset.rsplit("/", 1)[-1].rsplit("-v", 1)[0]
        pub = PUBLISHED_DT.get((env.name, quality)) if env else None
        rate = {c: np.mean([r["results"][c].get("env_steps_per_s", np.nan) for r in runs]) for c in conds}
        every = "; ".join(f"{c or 'policy'}: {v.mean():.1f} ± {v.std():.1f}"
                          + (f" ({rate[c]:.0f} env steps/s)" if np.isfinite(rate[c]) else "") for c, v in per.items())
        lines.append(f"| {dataset} | {label} | {head.mean():.1f} ± {head.std():.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in head)} ({len(runs)}) | {every} | "
                     f"{np.mean([r['seconds'] for r in runs]):.0f} | {'' if pub is None else pub} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", nargs=2, action="append", metavar=("DATASETS", "AGENTS"),
                    help="comma-separated Minari ids and agent specs (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--out", default="runs/offline_table")
    ap.add_argument("--json", default=None, help="also write every result and the table here")
    ap.add_argument("--start-within", type=float, default=None, metavar="SECONDS",
                    help="start no run after this many seconds (the runs started finish), for a lease of bounded length")
    ap.add_argument("--report", action="store_true", help="only print the table of what OUT holds")
    ap.add_argument("--from", dest="prior", default=None, metavar="JSON",
                    help="an earlier table's --json: its runs count as done (written under OUT where OUT lacks them)")
    ap.add_argument("--d3rlpy-site", default="", help=f"PYTHONPATH of d3rlpy 2.8.1 for the agent {D3RLPY}")
    args = ap.parse_args()
    out = Path(args.out)
    if args.prior:  # a table that grows across leases: earlier runs join the report and are not run again
        for r in json.loads(Path(args.prior).read_text())["runs"]:
            path = run_dir(out, r["dataset"], r["label"], r["seed"]) / "result.json"
            if not path.is_file():
                atomic_write_json(path, r)

    if not args.report:
        groups = args.group
        if groups is None:  # the quickstart's Pendulum data, built here if missing
            from seqrl.data.collect import collect
            from seqrl.presets import load_env

            env = load_env("pendulum")
            collect(env, "mixed")
            groups = [(env.dataset_id("mixed"), "dt_small,dm_small,dm_small:policy.pser=false")]
        seeds = [int(s) for s in args.seeds.split(",")]
        # seed-major order: a cut-off table still has every row, with fewer seeds
        jobs = [(d, a, s) for s in seeds for ds, ag in groups for d in ds.split(",") for a in ag.split(",")]
        jobs = [j for j in jobs if not (run_dir(out, j[0], parse_spec(j[1])[0], j[2]) / "result.json").is_file()]
        for d in sorted({d for d, a, _ in jobs if parse_spec(a)[1] == D3RLPY}):
            export_for_d3rlpy(out, d)
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        start_by = time.time() + (float("inf") if args.start_within is None else args.start_within)
        print(f"{len(jobs)} runs to do, {args.workers} at a time", flush=True)
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            futures = {pool.submit(one_run, d, a, s, args.episodes, args.device, str(out), threads, start_by,
                                   args.d3rlpy_site):
                       (d, a, s) for d, a, s in jobs}
            for f in as_completed(futures):
                d, a, s = futures[f]
                try:
                    r = f.result()
                    if r is None:
                        print(f"not started {d} {a} seed {s}: past --start-within", flush=True)
                        continue
                    scores = {k: round(v["score_mean"], 1) for k, v in r["results"].items()}
                    print(f"done {d} {a} seed {s}: {scores} in {r['seconds']:.0f} s", flush=True)
                except Exception as e:  # one failed run must not stop the others
                    print(f"FAILED {d} {a} seed {s}: {type(e).__name__}: {e}", flush=True)
    records = collect_results(out)
    table = report(records)
    print(f"\nnormalised score, mean ± std over seeds, {args.episodes} episodes per run\n{table}")
    if args.json:
        atomic_write_json(Path(args.json), {"table": table, "runs": records})


if __name__ == "__main__":
    main()
