"""S4 vs GRU vs transformer world models on DistractingMemory data: same data, same sizes, same budget.

For each backbone (agents/s4wm_small.toml, rssm_small.toml, twm_small.toml unless --preset-suffix says otherwise)
and seed: train through the one Trainer on a uniformly-random-policy dataset (seqrl/data/wm_collect.py), then
imagine from the checkpoint (seqrl/runners/imagine.py): a context of --context real steps from each episode's
start (the cue), the rest of the episode imagined open loop under the dataset's actions. Reports generation MSE
(per pixel, [0, 1] units) and reward accuracy in imagination (sign of the predicted reward at the doors step),
and the time per update (sample + losses + backward + AdamW) at sequence lengths --bench-lens.

CPU (docs/world_model.md):
    python experiments/wm_compare.py --width 16 --steps 200 --seeds 0 1 --out runs/wm_compare
GPU, the paper's width (someone else's run; sizes as arguments):
    python experiments/wm_compare.py --width 400 --data-steps 200000 --seq-len 512 --batch 16 --steps 20000 \
        --preset-suffix "" --device cuda --bench-lens 256 1024 4096 --out runs/wm_compare_gpu
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

from seqrl.data.wm_collect import build_distracting_memory, load_image_store
from seqrl.policies.base import TaskSpec
from seqrl.policies.world_model import WorldModel
from seqrl.presets import load_agent
from seqrl.presets import EnvPreset
from seqrl.runners.imagine import imagine_checkpoint
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer

AGENTS = {"s4": "s4wm", "gru": "rssm", "transformer": "twm"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16, help="hallway width W (episodes of W + 2 steps)")
    ap.add_argument("--data-steps", type=int, default=20_000, help="dataset size in env steps")
    ap.add_argument("--steps", type=int, default=200, help="updates per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--backbones", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    ap.add_argument("--preset-suffix", default="_small", help="'_small' (CPU) or '' (agents/s4wm.toml, ...)")
    ap.add_argument("--seq-len", type=int, default=0, help="training sequence length (0: at least W + 2, the preset's if larger)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
    ap.add_argument("--d-model", type=int, default=0, help="backbone width (0: the preset's)")
    ap.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the preset's)")
    ap.add_argument("--context", type=int, default=4, help="real steps read before imagining (the cue is step 0)")
    ap.add_argument("--sequences", type=int, default=64, help="episodes imagined per run")
    ap.add_argument("--bench-lens", type=int, nargs="*", default=[256, 1024], help="sequence lengths to time an update at")
    ap.add_argument("--bench-batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eager", action="store_true", help="trainer.cuda_graph = false (CUDA graphs are untested here)")
    ap.add_argument("--out", default="runs/wm_compare")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(out / "datasets"))
    torch.set_num_threads(args.threads)

    t0 = time.time()
    did = build_distracting_memory(args.width, args.data_steps, seed=0)
    store = load_image_store(did, env_kwargs={"width": args.width})
    env = EnvPreset(name=f"distracting-memory-w{args.width}", env_id="seqrl/DistractingMemory-v0",
                    max_episode_steps=args.width + 2, env_kwargs={"width": args.width})
    print(f"dataset {did}: {len(store)} steps, {store.num_episodes} episodes ({time.time() - t0:.0f} s)", flush=True)
    horizon = args.width + 2 - args.context

    rows = []
    for backbone in args.backbones:
        for seed in args.seeds:
            policy = {}
            base = load_agent(AGENTS[backbone] + args.preset_suffix)
            seq = args.seq_len or max(base.policy.seq_len, args.width + 2)
            policy["seq_len"] = seq
            if args.d_model:
                policy["d_model"] = args.d_model
            trainer = {"steps": args.steps, "seed": seed, "threads": args.threads, "device": args.device,
                       "checkpoint_every": args.steps, "cuda_graph": not args.eager}
            if args.lr:
                trainer["lr"] = args.lr
            source = {"batch_size": args.batch} if args.batch else {}
            preset = load_agent(AGENTS[backbone] + args.preset_suffix,
                                 {"policy": policy, "trainer": trainer, "source": source})
            run_dir = out / f"{backbone}_w{args.width}_seed{seed}"
            torch.manual_seed(seed)
            agent = WorldModel(preset.policy, TaskSpec.from_store(store, env))
            n_params = sum(p.numel() for p in agent.parameters())
            t = time.time()
            if not (run_dir / "checkpoint.pt").exists():
                Trainer(agent, DatasetSource(preset.source, store), preset, run_dir).run()
            train_s = time.time() - t
            res = imagine_checkpoint(run_dir / "checkpoint.pt", args.context, horizon, run_dir / "imagine", dataset=store,
                                     sequences=args.sequences, seed=seed, device=args.device)
            row = {"backbone": backbone, "seed": seed, "params": n_params, "seq_len": seq, "train_s": round(train_s, 1),
                   "mse_mean": res["mse_mean"], "mse_last": res["mse_per_step"][-1],
                   "reward_accuracy": res["reward_accuracy"], "reward_steps": res["reward_steps"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    bench = []
    for backbone in args.backbones:
        for L in args.bench_lens:
            preset = load_agent(AGENTS[backbone] + args.preset_suffix, {"policy": {"seq_len": L}})
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
               "dataset": did, "steps": len(store), "width": args.width, "context": args.context, "horizon": horizon,
               "runs": rows, "bench": bench}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary))


def table(s: dict) -> str:
    lines = ["| backbone | seeds | generation MSE (mean over horizon) | MSE at the last step | reward accuracy |",
             "|---|---|---|---|---|"]
    for bb in dict.fromkeys(r["backbone"] for r in s["runs"]):
        rs = [r for r in s["runs"] if r["backbone"] == bb]
        f = lambda k: " / ".join(f"{r[k]:.4f}" if k != "reward_accuracy" else f"{100 * r[k]:.0f}%" for r in rs)  # noqa: E731
        lines.append(f"| {bb} | {len(rs)} | {f('mse_mean')} | {f('mse_last')} | {f('reward_accuracy')} |")
    lines += ["", "| backbone | seq len | s / update |", "|---|---|---|"]
    lines += [f"| {b['backbone']} | {b['seq_len']} | {b['s_per_update']:.3f} |" for b in s["bench"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
