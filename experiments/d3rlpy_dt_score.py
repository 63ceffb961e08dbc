"""d3rlpy side of the score comparison "seqrl Decision Transformer vs d3rlpy 2.8.1 DecisionTransformer".

Trains d3rlpy's DecisionTransformer on a flat .npz (made by experiments/export_d3rlpy.py from a Minari
dataset) and scores it on the gymnasium env with d3rlpy's own acting path. Runs under the d3rlpy
interpreter only (d3rlpy 2.8.1 pins gymnasium 1.0.0 / gym 0.26; nothing from seqrl is imported):

    python experiments/export_d3rlpy.py seqrl/walker2d/medium-v0 /tmp/w2d.npz        # seqrl's venv
    PYTHONPATH=/tmp/d3site python3 experiments/d3rlpy_dt_score.py --data /tmp/w2d.npz --env Walker2d-v5 \
        --steps 100000 --seed 0 --device cuda --episodes 50 --target-return 5000 --eval-seed-base 10000 \
        --out d3_w2d_s0.json
    # CPU smoke test: /work/d3venv/bin/python experiments/d3rlpy_dt_score.py --data /tmp/w2d.npz \
    #     --steps 50 --episodes 2 --device cpu --out /tmp/d3.json

--env, --ref-min and --ref-max default to the env_id / ref_*_score the exporter stores in the .npz.

Model: as experiments/d3rlpy_dt_worker.py, i.e. the paper-size configuration of d3rlpy's reproduction
script (reproductions/offline/decision_transformer.py at v2.8.1): VectorEncoderFactory([128],
exclude_last_activation=True), 3 layers, 1 head, context 20, max_timestep 1000, dropout 0.1 (attention,
residual, embedding), relu, simple position encoding, batch 64, lr 1e-4, weight decay 1e-4, gradient clip
0.25, WarmupSchedulerFactory(10000) (linear warm-up, then constant), StandardObservationScaler,
MultiplyRewardScaler(0.001). Difference: the repro script uses AdamWFactory (weight decay on every
parameter, as the DT paper's gym code does); the worker and the default here use GPTAdamWFactory (no decay
on biases, LayerNorm and embeddings, as seqrl's trainer does); --optim adamw gives the repro script's.
The repro script trains 100,000 steps (100 epochs of 1,000) and, after each epoch, plays 10 episodes
at target return 3600/6000/5000 (hopper/halfcheetah/walker2d) on an env seeded once. Here: one
`fit(n_steps=steps, n_steps_per_epoch=steps)` with NoopAdapterFactory (no logs, no progress bar, no
model saving), then --episodes episodes with StatefulTransformerWrapper (`algo.as_stateful_wrapper` with
IdentityTransformerActionSampler: DT's continuous head is deterministic), episode i reset with seed
eval_seed_base + i, at most 1000 steps each. Writes JSON to --out and prints `D3RLPY_SCORE {json}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--env", default="")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=10000, help="LR warm-up steps (repro script: 10000)")
    ap.add_argument("--optim", choices=["gpt-adamw", "adamw"], default="gpt-adamw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--max-episode-steps", type=int, default=1000)
    ap.add_argument("--target-return", type=float, default=5000.0)
    ap.add_argument("--eval-seed-base", type=int, default=0)
    ap.add_argument("--ref-min", type=float, default=None)
    ap.add_argument("--ref-max", type=float, default=None)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import gymnasium
    import torch

    import d3rlpy
    from d3rlpy.logging import NoopAdapterFactory

    data = np.load(args.data)
    env_id = args.env or (str(data["env_id"]) if "env_id" in data else "")
    ref_min = args.ref_min if args.ref_min is not None else float(data.get("ref_min_score", np.nan))
    ref_max = args.ref_max if args.ref_max is not None else float(data.get("ref_max_score", np.nan))
    if not env_id:
        raise SystemExit("--env is needed (the .npz names no env_id)")
    device = "cpu:0" if args.device == "cpu" else ("cuda:0" if args.device == "cuda" else args.device)

    d3rlpy.seed(args.seed)
    terminals = np.asarray(data["terminals"], np.float32)
    timeouts = np.asarray(data["timeouts"], np.float32) * (terminals == 0)  # 2.8.1 asserts they never overlap
    t0 = time.perf_counter()
    dataset = d3rlpy.dataset.MDPDataset(
        np.asarray(data["observations"], np.float32), np.asarray(data["actions"], np.float32),
        np.asarray(data["rewards"], np.float32), terminals, timeouts, action_space=d3rlpy.ActionSpace.CONTINUOUS)
    build_s = time.perf_counter() - t0

    optim_cls = d3rlpy.optimizers.GPTAdamWFactory if args.optim == "gpt-adamw" else d3rlpy.optimizers.AdamWFactory
    config = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=args.batch, learning_rate=1e-4,
        optim_factory=optim_cls(weight_decay=1e-4, clip_grad_norm=0.25,
                                lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(warmup_steps=args.warmup)),
        encoder_factory=d3rlpy.models.VectorEncoderFactory([128], exclude_last_activation=True),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(0.001),
        context_size=20, max_timestep=1000, num_heads=1, num_layers=3,
        attn_dropout=0.1, resid_dropout=0.1, embed_dropout=0.1, activation_type="relu",
        position_encoding_type=d3rlpy.PositionEncodingType.SIMPLE)
    algo = config.create(device=device)
    t0 = time.perf_counter()
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=args.steps, experiment_name="d3rlpy_dt_score",
             with_timestamp=False, logger_adapter=NoopAdapterFactory(), show_progress=False, save_interval=10**9)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0

    actor = algo.as_stateful_wrapper(target_return=args.target_return,
                                     action_sampler=d3rlpy.algos.IdentityTransformerActionSampler())
    env = gymnasium.make(env_id)
    returns, lengths = [], []
    t0 = time.perf_counter()
    for i in range(args.episodes):
        actor.reset()
        obs, _ = env.reset(seed=args.eval_seed_base + i)
        reward, total, t = 0.0, 0.0, 0
        while t < args.max_episode_steps:
            obs, r, term, trunc, _ = env.step(actor.predict(obs, reward))
            reward = float(r)
            total += reward
            t += 1
            if term or trunc:
                break
        returns.append(total)
        lengths.append(t)
    eval_s = time.perf_counter() - t0
    env.close()

    norm = [100.0 * (R - ref_min) / (ref_max - ref_min) for R in returns]
    result = {
        "env": env_id, "data": args.data, "transitions": int(len(terminals)), "episodes_in_data": len(dataset.episodes),
        "seed": args.seed, "returns": returns, "lengths": lengths, "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)), "normalized": norm, "mean_normalized": float(np.mean(norm)),
        "ref_min": ref_min, "ref_max": ref_max, "dataset_build_s": build_s, "train_s": train_s, "eval_s": eval_s,
        "config": {"steps": args.steps, "batch": args.batch, "warmup": args.warmup, "optim": args.optim, "lr": 1e-4,
                   "weight_decay": 1e-4, "clip_grad_norm": 0.25, "embed": 128, "layers": 3, "heads": 1,
                   "context": 20, "max_timestep": 1000, "dropout": 0.1, "reward_scale": 0.001,
                   "target_return": args.target_return, "episodes": args.episodes,
                   "eval_seed_base": args.eval_seed_base, "max_episode_steps": args.max_episode_steps,
                   "device": device},
        "d3rlpy_config": json.loads(config.serialize()),
        "versions": {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__, "gymnasium": gymnasium.__version__,
                     "numpy": np.__version__, "python": platform.python_version(),
                     "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None},
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print("D3RLPY_SCORE " + text, flush=True)


if __name__ == "__main__":
    main()
