"""S4 vs GRU vs transformer world models on one image task: same data, same sizes, same budget.

--task distracting-memory (default), four-rooms or multi-doors-keys (seqrl/envs/image_memory.py, gridworlds.py).
For each backbone (agents/s4wm_small.toml, rssm_small.toml, twm_small.toml unless --preset-suffix says otherwise;
`s5`, run only when asked, is the S4 preset with `policy.ssm_kind = "s5"`) and seed: train through the one Trainer
on the task's scripted dataset (seqrl/data/wm_collect.py), then imagine from the checkpoint
(seqrl/runners/imagine.py): a context of --context real steps from each episode's start, the rest of the episode
imagined open loop under the dataset's actions. Reports generation MSE (per pixel, [0, 1]
units: the mean over the horizon, and at imagined steps 1, 10, 50, 100, 250, 500 and the last, where the horizon
reaches them), reward MSE, and for distracting-memory the reward accuracy in imagination (sign of the predicted
reward at the doors step); and the time per update (sample + losses + backward + AdamW) at sequence lengths
--bench-lens. Four-rooms and multi-doors-keys episodes are --max-steps long (the env's default: 1000 and 600);
their context defaults to half an episode (Four-Rooms: 500 real steps, then 500 imagined).

CPU (docs/world_model.md):
    python experiments/wm_compare.py --width 16 --steps 200 --seeds 0 1 --out runs/wm_compare
    python experiments/wm_compare.py --task four-rooms --data-steps 20000 --steps 200 --out runs/wm_compare_rooms
GPU, the paper's width (someone else's run; sizes as arguments):
    python experiments/wm_compare.py --width 400 --data-steps 200000 --seq-len 512 --batch 16 --steps 20000 \
        --preset-suffix "" --device cuda --set policy.reward_loss_scale=1000 --out runs/wm_compare_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from seqrl.data.wm_collect import TASKS, build_wm_dataset, load_image_store
from seqrl.policies.base import TaskSpec
from seqrl.policies.world_model import WorldModel
from seqrl.presets import load_agent, merge, parse_overrides
from seqrl.presets import EnvPreset
from seqrl.runners.imagine import imagine_checkpoint, training_length_note
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer

AGENTS = {"s4": "s4wm", "gru": "rssm", "transformer": "twm", "s5": "s4wm"}  # s5: the S4 preset with S5 layers
OVERRIDES = {"s5": {"ssm_kind": "s5"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="distracting-memory", choices=list(TASKS))
    ap.add_argument("--width", type=int, default=16, help="distracting-memory: hallway width W (episodes of W + 2 steps)")
    ap.add_argument("--max-steps", type=int, default=0, help="four-rooms, multi-doors-keys: episode length (0: the env's)")
    ap.add_argument("--n-keys", type=int, default=7, help="multi-doors-keys: keys (and doors)")
    ap.add_argument("--data-steps", type=int, default=20_000, help="dataset size in env steps")
    ap.add_argument("--steps", type=int, default=200, help="updates per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--backbones", nargs="+", default=["s4", "gru", "transformer"], choices=list(AGENTS))
    ap.add_argument("--preset-suffix", default="_small", help="'_small' (CPU) or '' (agents/s4wm.toml, ...)")
    ap.add_argument("--seq-len", type=int, default=0, help="training sequence length (0: the preset's; distracting-memory: "
                                                          "at least W + 2)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
    ap.add_argument("--d-model", type=int, default=0, help="backbone width (0: the preset's)")
    ap.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the preset's)")
    ap.add_argument("--context", type=int, default=0, help="real steps read before imagining (0: 4 for distracting-memory, "
                                                          "whose cue is step 0; half an episode for the others)")
    ap.add_argument("--sequences", type=int, default=64, help="episodes imagined per run")
    ap.add_argument("--bench-lens", type=int, nargs="*", default=[256, 1024], help="sequence lengths to time an update at")
    ap.add_argument("--bench-batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eager", action="store_true", help="trainer.cuda_graph = false (eager updates)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a preset override for every run and every timed update, as seqrl train's "
                         "(e.g. policy.reward_loss_scale=100)")
    ap.add_argument("--out", default="runs/wm_compare")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(out / "datasets"))
    torch.set_num_threads(args.threads)

    t0 = time.time()
    task = TASKS[args.task]
    if args.task == "distracting-memory":
        env_kwargs, ep_len, tag = {"width": args.width}, args.width + 2, f"w{args.width}"
    else:
        import gymnasium as gym

        import seqrl.envs  # noqa: F401

        env_kwargs = {"n_keys": args.n_keys} if args.task == "multi-doors-keys" else {}
        if args.max_steps:
            env_kwargs["max_steps"] = args.max_steps
        probe = gym.make(task.env_id, **env_kwargs)
        ep_len = probe.unwrapped.max_steps
        probe.close()
        tag = task.dataset_id(env_kwargs).split("/")[1] + f"-T{ep_len}"
    did = build_wm_dataset(args.task, args.data_steps, 0, **env_kwargs)
    store = load_image_store(did, task.env_id, env_kwargs=env_kwargs)
    env = EnvPreset(name=tag, env_id=task.env_id, max_episode_steps=ep_len, env_kwargs=env_kwargs)
    print(f"dataset {did}: {len(store)} steps, {store.num_episodes} episodes ({time.time() - t0:.0f} s)", flush=True)
    context = args.context or (4 if args.task == "distracting-memory" else ep_len // 2)
    horizon = ep_len - context
    if horizon < 1:
        ap.error(f"--context {context} leaves no step to imagine in episodes of {ep_len} steps")
    marks = [h for h in (1, 10, 50, 100, 250, 500) if h < horizon] + [horizon]

    rows = []
    sets = parse_overrides(args.set)
    for backbone in args.backbones:
        for seed in args.seeds:
            policy = dict(OVERRIDES.get(backbone, {}))
            base = load_agent(AGENTS[backbone] + args.preset_suffix)
            seq = args.seq_len or (max(base.policy.seq_len, ep_len) if args.task == "distracting-memory"
                                   else base.policy.seq_len)
            policy["seq_len"] = seq
            note = training_length_note(context + horizon, seq)
            if note:
                print(f"{backbone}: {note}; --seq-len sets it", flush=True)
            if args.d_model:
                policy["d_model"] = args.d_model
            trainer = {"steps": args.steps, "seed": seed, "threads": args.threads, "device": args.device,
                       "checkpoint_every": args.steps, "cuda_graph": not args.eager}
            if args.lr:
                trainer["lr"] = args.lr
            source = {"batch_size": args.batch} if args.batch else {}
            preset = load_agent(AGENTS[backbone] + args.preset_suffix,
                                merge({"policy": policy, "trainer": trainer, "source": source}, sets))
            run_dir = out / f"{backbone}_{tag}_seed{seed}"
            torch.manual_seed(seed)
            agent = WorldModel(preset.policy, TaskSpec.from_store(store, env))
            n_params = sum(p.numel() for p in agent.parameters())
            t = time.time()
            if not (run_dir / "checkpoint.pt").exists():
                Trainer(agent, DatasetSource(preset.source, store), preset, run_dir).run()
            train_s = time.time() - t
            res = imagine_checkpoint(run_dir / "checkpoint.pt", context, horizon, run_dir / "imagine", dataset=store,
                                     sequences=args.sequences, seed=seed, device=args.device)
            row = {"backbone": backbone, "seed": seed, "params": n_params, "seq_len": seq, "train_s": round(train_s, 1),
                   "mse_mean": res["mse_mean"], "mse_last": res["mse_per_step"][-1],
                   "mse_at": {str(h): res["mse_per_step"][h - 1] for h in marks}, "reward_mse": res["reward_mse"],
                   "reward_accuracy": res["reward_accuracy"],
                   "reward_accuracy_posterior": res["reward_accuracy_posterior"], "reward_steps": res["reward_steps"],
                   # no model, the same episodes: the last context frame held; the more common reward sign
                   "hold_mean": res["mse_hold_mean"], "hold_last": res["mse_hold_per_step"][-1],
                   "hold_at": {str(h): res["mse_hold_per_step"][h - 1] for h in marks},
                   "reward_accuracy_constant": res["reward_accuracy_constant"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    bench = []
    for backbone in args.backbones:
        for L in args.bench_lens:
            preset = load_agent(AGENTS[backbone] + args.preset_suffix,
                                merge({"policy": {"seq_len": L, **OVERRIDES.get(backbone, {})}}, sets))
            torch.manual_seed(0)
            agent = WorldModel(preset.policy, TaskSpec.from_store(store, env)).to(args.device)
            opt = torch.optim.AdamW(agent.parameters(), lr=1e-4)
            gen = torch.Generator().manual_seed(0)
            times = []
            for i in range(3):
                t = time.perf_counter()
                batch = agent.sample(store, args.bench_batch, gen).to(args.device)
                terms = agent.losses(batch)
                opt.zero_grad()
                sum(v for k, v in terms.items() if k.startswith("loss_")).backward()
                opt.step()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:  # the first is warm-up
                    times.append(time.perf_counter() - t)
            row = {"backbone": backbone, "seq_len": L, "batch": args.bench_batch, "s_per_update": statistics.median(times)}
            bench.append(row)
            print(json.dumps(row), flush=True)

    summary = {"command": "python experiments/wm_compare.py " + " ".join(os.sys.argv[1:]),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}",
               "task": args.task, "env_kwargs": env_kwargs, "episode_steps": ep_len,
               "dataset": did, "steps": len(store),
               "width": args.width if args.task == "distracting-memory" else None, "context": context, "horizon": horizon,
               "runs": rows, "bench": bench}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary))


def table(s: dict) -> str:
    """Markdown tables of a summary: one row per backbone, its seeds separated by /, and a last row of the reference
    levels of no model (the first backbone's runs: the episodes imagined depend on the seed only)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    ref = [r for r in s["runs"] if r["backbone"] == s["runs"][0]["backbone"] and "hold_mean" in r] if s["runs"] else []
    if s.get("task", "distracting-memory") == "distracting-memory":
        lines = ["| backbone | seeds | generation MSE (mean over horizon) | MSE at the last step | reward accuracy "
                 "(imagined; posterior) |", "|---|---|---|---|---|"]
        for bb in dict.fromkeys(r["backbone"] for r in s["runs"]):
            rs = [r for r in s["runs"] if r["backbone"] == bb]
            acc = lambda r: f"{pct(r['reward_accuracy'])}; {pct(r.get('reward_accuracy_posterior'))}"  # noqa: E731
            lines.append(f"| {bb} | {len(rs)} | {' / '.join(fmt(r['mse_mean']) for r in rs)} | "
                         f"{' / '.join(fmt(r['mse_last']) for r in rs)} | {' / '.join(acc(r) for r in rs)} |")
        if ref:
            lines.append(f"| no model: last context frame held; the more common sign | {len(ref)} | "
                         f"{' / '.join(fmt(r['hold_mean']) for r in ref)} | "
                         f"{' / '.join(fmt(r['hold_last']) for r in ref)} | "
                         f"{' / '.join(pct(r['reward_accuracy_constant']) for r in ref)} |")
    else:  # generation MSE against the imagined step (seeds separated by /)
        marks = list(s["runs"][0]["mse_at"]) if s["runs"] else []
        lines = [f"| backbone | seeds | MSE, mean over {s['horizon']} | " + " | ".join(f"MSE at step {h}" for h in marks)
                 + " | reward MSE |", "|---|---|---|" + "---|" * len(marks) + "---|"]
        for bb in dict.fromkeys(r["backbone"] for r in s["runs"]):
            rs = [r for r in s["runs"] if r["backbone"] == bb]
            cells = [" / ".join(fmt(r["mse_mean"]) for r in rs)]
            cells += [" / ".join(fmt(r["mse_at"][h]) for r in rs) for h in marks]
            cells += [" / ".join(fmt(r["reward_mse"]) for r in rs)]
            lines.append(f"| {bb} | {len(rs)} | " + " | ".join(cells) + " |")
        if ref:
            cells = [" / ".join(fmt(r["hold_mean"]) for r in ref)]
            cells += [" / ".join(fmt(r["hold_at"][h]) for r in ref) for h in marks] + ["n/a"]
            lines.append(f"| no model: last context frame held | {len(ref)} | " + " | ".join(cells) + " |")
    lines += ["", "| backbone | seq len | s / update |", "|---|---|---|"]
    lines += [f"| {b['backbone']} | {b['seq_len']} | {b['s_per_update']:.3f} |" for b in s["bench"]]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
