"""d3rlpy side of experiments/bench_gpu_dt.py: training throughput of d3rlpy's DecisionTransformer.

Runs in its own process (d3rlpy 2.8.1 pins gymnasium 1.0.0 and gym 0.26, so it never shares an
interpreter with seqrl); the driver starts it with PYTHONPATH set to the d3rlpy site folder:

    PYTHONPATH=/tmp/d3site python3 experiments/d3rlpy_dt_worker.py --device cuda --out d3.json

Model: the configuration of d3rlpy's own DT reproduction script (reproductions/offline/
decision_transformer.py) at the paper's size: VectorEncoderFactory([128], exclude_last_activation)
so the embedding width is 128, 3 layers, 1 head, context 20, max_timestep 1000, dropout 0.1 on
attention, residual and embeddings, batch 64, AdamW (GPTAdamWFactory, weight decay 1e-4, gradient
clip 0.25, 10k-step warm-up schedule; the reproduction script's AdamWFactory decays every parameter, GPTAdamW
leaves biases, LayerNorms and embeddings out, as seqrl's trainer does), StandardObservationScaler, MultiplyRewardScaler(0.001).
Data: a synthetic Hopper-shaped MDPDataset (obs 11, action 3; E episodes of T steps, random values).

What is timed, per variant (each a fresh algo):
  fit       `algo.fit(dataset, n_steps=W+R*N, n_steps_per_epoch=W+R*N)` with NoopAdapterFactory, no
            progress bar, no evaluation env, no model saving. The callback that `fit` calls after
            every step records a timestamp (after torch.cuda.synchronize) at step W and every N steps
            after it, so each repeat times N iterations of fit's own loop body exactly as a user
            runs it: `dataset.sample_trajectory_batch` (Python loop over B windows) + `algo.update`
            (numpy -> torch batch, host-to-device copy, scalers, forward, backward, clip, AdamW,
            LR schedule, `float(loss)` device sync) + d3rlpy's metric bookkeeping. The first W steps
            (model build, cuDNN/cuBLAS warm-up, torch.compile + CUDA-graph capture when
            compile_graph) are excluded.
  sample    `dataset.sample_trajectory_batch(B, K)` alone (CPU, numpy), windows/s.
  update    `algo.update(batch)` alone on P pre-sampled batches cycled, timed over N steps.

Prints one line `D3RLPY_RESULT {json}` on stdout and writes the same JSON to --out when given.
Exit code 3: d3rlpy cannot be imported (the driver then skips the d3rlpy part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback


def log(*a):
    print("[d3rlpy-worker]", *a, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--episode-len", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300, help="N: timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=50, help="W: untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="R")
    ap.add_argument("--variants", default="fp32:64,fp32:256,compile_graph:64",
                    help="comma list of MODE:BATCH, MODE in fp32|compile_graph (compile_graph: CUDA only)")
    ap.add_argument("--sample-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    try:
        import numpy as np
        import torch

        import d3rlpy
    except Exception as e:  # noqa: BLE001
        log(f"cannot import d3rlpy: {type(e).__name__}: {e}")
        return 3
    if args.threads:
        torch.set_num_threads(args.threads)
    from d3rlpy.logging import NoopAdapterFactory

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        log("CUDA requested but not available")
        return 2
    device = "cuda:0" if args.device == "cuda" else args.device
    if not cuda:
        device = "cpu:0"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    info = {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "device": device,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}
    try:
        import gym
        import gymnasium
        info["gymnasium"], info["gym"] = gymnasium.__version__, gym.__version__
    except Exception as e:  # noqa: BLE001
        info["gym_import_error"] = repr(e)
    log("versions", info)

    # ------------------------------------------------------------------ synthetic Hopper-shaped data
    d3rlpy.seed(0)
    E, T = args.episodes, args.episode_len
    rng = np.random.default_rng(0)
    N = E * T
    t0 = time.perf_counter()
    obs = rng.standard_normal((N, 11), dtype=np.float32)
    act = rng.uniform(-1, 1, (N, 3)).astype(np.float32)
    rew = rng.standard_normal(N).astype(np.float32)
    term = np.zeros(N, np.float32)
    timeout = np.zeros(N, np.float32)
    timeout[T - 1 :: T] = 1.0  # every episode truncated at T steps (Hopper's 1000-step limit)
    dataset = d3rlpy.dataset.MDPDataset(obs, act, rew, term, timeout,
                                        action_space=d3rlpy.ActionSpace.CONTINUOUS)
    t_data = time.perf_counter() - t0
    log(f"MDPDataset: {len(dataset.episodes)} episodes, {N} steps, built in {t_data:.1f}s")

    def make(batch: int, compile_graph: bool):
        return d3rlpy.algos.DecisionTransformerConfig(
            batch_size=batch,
            learning_rate=1e-4,
            optim_factory=d3rlpy.optimizers.GPTAdamWFactory(
                weight_decay=1e-4, clip_grad_norm=0.25,
                lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=10000)),
            encoder_factory=d3rlpy.models.VectorEncoderFactory([128], exclude_last_activation=True),
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
            reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(0.001),
            context_size=20,
            max_timestep=1000,
            num_heads=1,
            num_layers=3,
            attn_dropout=0.1,
            resid_dropout=0.1,
            embed_dropout=0.1,
            activation_type="relu",
            position_encoding_type=d3rlpy.PositionEncodingType.SIMPLE,
            compile_graph=compile_graph,
        ).create(device=device)

    K, W, Nst, R = 20, args.warmup, args.steps, args.repeats
    results = []

    def write(partial: bool) -> str:
        """The JSON so far; rewritten after every variant so a killed run still leaves its results."""
        text = json.dumps({"info": info, "dataset": {"episodes": E, "episode_len": T, "steps": N, "build_s": t_data},
                           "results": results, "partial": partial})
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, args.out)
        return text
    for spec in [v for v in args.variants.split(",") if v]:
        mode, b = spec.split(":")
        B = int(b)
        rec = {"variant": mode, "batch_size": B, "context": K, "steps": Nst, "warmup": W, "repeats": R}
        if mode == "compile_graph" and not cuda:
            rec["skipped"] = "compile_graph needs CUDA"
            results.append(rec)
            continue
        try:
            algo = make(B, mode == "compile_graph")
            marks = {W + i * Nst: i for i in range(R + 1)}
            stamps: dict[int, float] = {}

            def cb(_algo, _epoch, total_step):
                if total_step in marks:
                    sync()
                    stamps[total_step] = time.perf_counter()

            total = W + R * Nst
            t0 = time.perf_counter()
            algo.fit(dataset, n_steps=total, n_steps_per_epoch=total, experiment_name="bench",
                     with_timestamp=False, logger_adapter=NoopAdapterFactory(), show_progress=False,
                     save_interval=10**9, callback=cb)
            wall = time.perf_counter() - t0
            ks = sorted(stamps)
            per = [stamps[ks[i + 1]] - stamps[ks[i]] for i in range(len(ks) - 1)]
            sps = [Nst / t for t in per]
            rec |= {"fit_wall_s": wall, "fit_repeat_s": per, "fit_steps_per_s": sps,
                    "fit_steps_per_s_median": statistics.median(sps),
                    "fit_samples_per_s_median": B * statistics.median(sps),
                    "n_params": sum(p.numel() for p in algo.impl.modules.transformer.parameters())}
            log(f"{mode} B={B} fit: {statistics.median(sps):.1f} steps/s = "
                f"{B * statistics.median(sps):.0f} windows/s (repeats {[round(s, 1) for s in sps]})")

            # sampling alone (the CPU part of fit's loop)
            it = max(args.sample_iters, 1)
            dataset.sample_trajectory_batch(B, length=K)
            t0 = time.perf_counter()
            for _ in range(it):
                dataset.sample_trajectory_batch(B, length=K)
            ts = time.perf_counter() - t0
            rec |= {"sample_batches_per_s": it / ts, "sample_windows_per_s": it * B / ts}

            # update alone on pre-sampled batches
            P = 8
            batches = [dataset.sample_trajectory_batch(B, length=K) for _ in range(P)]
            for i in range(min(W, 10)):
                algo.update(batches[i % P])
            ups = []
            for _ in range(R):
                sync()
                t0 = time.perf_counter()
                for i in range(Nst):
                    algo.update(batches[i % P])
                sync()
                ups.append(Nst / (time.perf_counter() - t0))
            rec |= {"update_steps_per_s": ups, "update_steps_per_s_median": statistics.median(ups),
                    "update_samples_per_s_median": B * statistics.median(ups)}
            log(f"{mode} B={B} sample-only {rec['sample_windows_per_s']:.0f} windows/s; "
                f"update-only {statistics.median(ups):.1f} steps/s")
            del algo
            if cuda:
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"{type(e).__name__}: {e}"
            log(f"{mode} B={B} failed:\n{traceback.format_exc()}")
        results.append(rec)
        write(partial=True)

    text = write(partial=False)
    print("D3RLPY_RESULT " + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
