"""Decision Mamba's training cost: the fine-grained branch, and whole updates through the Trainer.

1. The fine-grained mixer, forward + backward over a batch of windows (B=256, 3K=60 tokens, width 128),
   two ways that compute the same thing:
   - "one scan, restart every 3" (seqrl): `MambaMixer.forward(x, group=3)`, a single scan over the 60
     tokens whose state restarts at each (R, s, a) triplet (`selective_scan(..., reset_every=3)`);
   - "B*K sequences of 3" (the baseline, seqrl's earlier form): the same mixer on x reshaped to
     (B*K, 3, d), each triplet its own sequence from a zero state.
2. ms per optimiser update through `Trainer.iteration` (CUDA graph and bfloat16 autocast, the
   defaults on one GPU) for DM at DT's size (width 128, 3 layers, K=20, batch 256) with and without
   the fine branch and self-evolution (PSER), and DT (agents/dt.toml) beside them.

Times are CUDA-event medians of repeated calls after warm-up (Triton compiles outside the timing). The
eager fine-mixer times include the host's kernel launches, which move them by about 0.5 ms from run to run;
the graph-captured updates do not. --profile prints instead where the GPU time of DM's update goes: the
kernels of 5 eager updates (bf16 autocast), by total time, and the PyTorch operators that launched them.

    seqrl collect --env pendulum --quality mixed      # the dataset (seconds; or pass --dataset)
    python experiments/bench_dm_update.py --out docs/results/bench_dm_update.json
    python experiments/bench_dm_update.py --profile
    python experiments/bench_dm_update.py --quick     # DM's and DT's updates only
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from seqrl.data.minari_io import load_store
from seqrl.nn.mamba import MambaMixer
from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import find_env_for_dataset, load_agent, load_env
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer


def cuda_ms(fn, reps: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fine_branch(rows: list) -> None:
    torch.manual_seed(0)
    B, T, d = 256, 60, 128
    mixer = MambaMixer(d).cuda()
    x = torch.randn(B, T, d, device="cuda", requires_grad=True)
    ways = {"one scan, restart every 3": lambda: mixer(x, group=3)[0],
            "B*K sequences of 3": lambda: mixer(x.reshape(B * T // 3, 3, d))[0].reshape(B, T, d)}
    with torch.no_grad():
        diff = (ways["one scan, restart every 3"]() - ways["B*K sequences of 3"]()).abs().max().item()
    print(f"fine branch: max |difference| between the two ways {diff:.2e}")
    for amp in (False, True):
        for name, f in ways.items():
            def step(f=f):
                with torch.autocast("cuda", torch.bfloat16, enabled=amp):
                    y = f()
                y.float().square().mean().backward()
            ms = cuda_ms(step)
            rows.append({"part": "fine mixer fwd+bwd", "variant": name, "bf16": amp, "ms": ms})
            print(f"fine mixer fwd+bwd  bf16={amp!s:5}  {name:28s} {ms:7.2f} ms")


DM = {"embed_dim": 128, "n_layers": 3, "pser_steps": 10_000, "pser_interval": 250}
TRAINER = {"device": "cuda", "steps": 10_000, "warmup_steps": 100, "eval_episodes": 0, "checkpoint_every": 0}
SOURCE = {"batch_size": 256}


def runner_for(agent: str, policy: dict, trainer: dict, store, env, name: str) -> Trainer:
    preset = load_agent(agent, {"policy": policy, "source": SOURCE, "trainer": trainer})
    torch.manual_seed(0)
    pol = policy_class(agent)(preset.policy, TaskSpec.from_store(store, env))
    return Trainer(pol, DatasetSource(preset.source, store), preset, Path("/tmp/bench_dm_update") / name.replace(" ", "_"))


def load(dataset: str):
    """The dataset's store and its environment."""
    return load_store(dataset), load_env(find_env_for_dataset(dataset).name, {})


def profile_update(dataset: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    r = runner_for("dm", DM, TRAINER | {"cuda_graph": False}, *load(dataset), "profile")
    for _ in range(5):
        r.iteration()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            r.iteration()
        torch.cuda.synchronize()
    events = prof.key_averages()
    print("DM update (eager, bf16 autocast), the kernels of 5 updates:")
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print("The PyTorch operators that launched them (GPU time of each call's kernels, nested calls counted in each):")
    ops = sorted((e for e in events if e.key.startswith("aten::") and e.device_time_total > 0),
                 key=lambda e: -e.device_time_total)
    for e in ops[:30]:
        t = e.device_time_total
        print(f"{e.key:40s} {e.count:6d} calls {t / 1e3:8.3f} ms {t / e.count:8.1f} us")


def updates(rows: list, dataset: str, only: tuple[str, ...] | None = None) -> None:
    cases = {"DM": ("dm", DM), "DM, no fine branch": ("dm", DM | {"multi_grained": False}),
             "DM, no self-evolution": ("dm", DM | {"pser": False}), "DT": ("dt", {})}
    store, env = load(dataset)
    for name, (agent, policy) in cases.items():
        if only and name not in only:
            continue
        r = runner_for(agent, policy, TRAINER, store, env, name)
        ms = cuda_ms(r.iteration, reps=50, warmup=10)
        rows.append({"part": "runner update", "variant": name, "ms": ms, "updates_per_s": 1e3 / ms,
                     "cuda_graph": r.use_graph})
        print(f"runner update  {name:24s} {ms:7.2f} ms  ({1e3 / ms:5.1f} updates/s, graph={r.use_graph})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="seqrl/pendulum/mixed-v0")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="print the kernels of DM's update instead")
    ap.add_argument("--quick", action="store_true", help="only the runner updates of DM and DT")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_dm_update.py times CUDA kernels and graphs: it needs a GPU")
    if args.profile:
        return profile_update(args.dataset)
    rows: list = []
    if not args.quick:
        fine_branch(rows)
    updates(rows, args.dataset, ("DM", "DT") if args.quick else None)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
