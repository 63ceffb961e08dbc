"""GPU benchmark of seqrl's Decision Transformer: training throughput against d3rlpy 2.8.1, and
evaluation rollout cost with the KV cache against the paper's re-encode-the-window approach.

Commands
--------
On the GPU machine (one H100; python3 = Python 3.12 with torch, no internet), from the repo root,
with the wheels carried in `.whl/` (seqrl side: gymnasium 1.4.0, farama-notifications, mujoco +
mujoco-core 4.0.0, glfw) and `.whl/d3/` (d3rlpy 2.8.1 and what it pins: gymnasium 1.0.0, gym 0.26.2,
gym-notices, structlog, dataclasses-json, marshmallow 3, farama-notifications); everything else
(tqdm, h5py, scikit-learn, click, colorama, typing-inspect, tensorboard, imageio) is in the image:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/d3site .whl/d3/*.whl \
      && export PYTHONPATH=/tmp/site || exit 1
    set -o pipefail; PYTHONUNBUFFERED=1 timeout 580 python3 experiments/bench_gpu_dt.py --device cuda \
      --d3rlpy-site /tmp/d3site 2>&1 | tee $OUT/bench_gpu_dt.log

(the device tool: carry [".whl"], timeout_s 600; about 6-7 minutes on one H100, --budget-s 520 keeps it
inside 10). Wheels were fetched with `pip download --no-deps --only-binary=:all: --python-version 3.12
--implementation cp --platform manylinux_2_28_x86_64 ...`; gym 0.26.2 has no wheel on PyPI, so its
sdist was built into a py3-none-any wheel with `pip wheel --no-deps`.

The d3rlpy part runs as a subprocess (`experiments/d3rlpy_dt_worker.py`) with PYTHONPATH replaced by
--d3rlpy-site (interpreter: --d3rlpy-python, default this one), so d3rlpy's gymnasium 1.0.0 / gym 0.26
never meet seqrl's gymnasium. Results: a plain-text table on stdout, and JSON (plus the table) in
$OUT/bench_gpu_dt.json / .txt, or in the current directory when OUT is unset.

CPU smoke test (tiny step counts; d3rlpy from a separate venv, or skipped when not importable):

    python experiments/bench_gpu_dt.py --quick --device cpu --d3rlpy-python /work/d3venv/bin/python
    python experiments/bench_gpu_dt.py --quick --device cpu            # d3rlpy part skipped

What is measured
----------------
1. Training, seqrl: `Trainer.iteration` on windows from `seqrl.data.samplers.windows`, the store
   on the GPU (source.store_on_device), i.e. the body of `Trainer.run`'s loop without its
   every-100-steps logging: sample (B, K=20) windows with the trainer's device generator, `train_step`
   (autocast, loss, backward, clip 0.25, AdamW, LR schedule). Model: agents/dt.toml (embed 128, 3 layers,
   1 head, K=20, dropout 0.1), env preset hopper, synthetic Hopper-shaped store (obs 11, action 3,
   1000 episodes x 1000 steps). Variants: fp32 (trainer.amp=false), bf16 (trainer.amp=true),
   bf16+compile (trainer.compile=true), each at B=64, then the fastest at B=256. W warm-up steps, then R
   repeats of N steps, each timed with torch.cuda.synchronize() on both ends; median reported.
   seqrl's loop never syncs inside (train_step returns device tensors).
2. Training, d3rlpy: see experiments/d3rlpy_dt_worker.py. Headline number: N iterations of
   `DecisionTransformer.fit`'s own loop (d3rlpy's Python window sampling + `update`, which syncs
   every step through `float(loss)`), timed from the per-step callback; also sampling alone and
   `update` alone; variants fp32 B=64, fp32 B=256, compile_graph (torch.compile + CUDA graph) B=64.
3. Evaluation: n_envs=50, random initial weights, fp32, `policy.eval()`, no env: each step does what
   `seqrl.runners.evaluate.evaluate` does around `envs.step` - obs/reward/done numpy arrays moved to
   the device, `policy.act`, `action.cpu()`, `policy.observe` (episodes end at t=1000). Context
   K in {20, 200, 2000}: the attention window is 3K tokens. Compared with the paper's evaluation
   (reference code's `get_action`): keep the last K steps per env and re-run `policy.predict` over the
   full (50, K) window (3K tokens) every step, batched over the 50 envs; its cost does not depend on
   how full the window is (the reference pads to K), so it is timed in steady state.
   Optionally (when gymnasium's MuJoCo envs import) the same KV-cache loop on a real Hopper-v5 vector
   env (sync, 50 envs), next to a random-action loop (the env's own cost), plus one call of
   `evaluate()` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3


def log(*a):
    print(*a, flush=True)


def ensure_tensorboard():
    """Trainer opens a SummaryWriter; train_step never uses it. Stub it where tensorboard is absent."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception as e:  # noqa: BLE001
        import types

        log(f"note: torch.utils.tensorboard unavailable ({type(e).__name__}); using a no-op SummaryWriter")

        class SummaryWriter:
            def __init__(self, *a, **k):
                pass

            def add_scalar(self, *a, **k):
                pass

            def close(self):
                pass

        mod = types.ModuleType("torch.utils.tensorboard")
        mod.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = mod


def make_store(episodes: int, T: int, seed: int = 0):
    import gymnasium as gym

    from seqrl.data.store import ReplayStore

    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((episodes * (T + 1), OBS_DIM), dtype=np.float32)  # T+1: each episode's final one
    act = rng.uniform(-1, 1, (episodes * T, ACT_DIM)).astype(np.float32)
    rew = rng.standard_normal(episodes * T).astype(np.float32)
    trunc = np.zeros(T, bool)
    trunc[-1] = True
    eps = [{"obs": obs[i * (T + 1):(i + 1) * (T + 1)], "act": act[i * T:(i + 1) * T], "rew": rew[i * T:(i + 1) * T],
            "term": np.zeros(T, bool), "trunc": trunc} for i in range(episodes)]
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    return ReplayStore.from_episodes(eps, obs_space, act_space, meta={"dataset_id": "bench/synthetic-hopper"})


class Sync:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self):
        if self.cuda:
            torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ training
def bench_seqrl_train(store, env, device, variant, amp, compile_, graph, batch, W, N, R, run_root):
    from seqrl.policies.dt import DecisionTransformer
    from seqrl.policies.base import TaskSpec
    from seqrl.presets import load_agent
    from seqrl.data.samplers import windows
    from seqrl.runners.sources import DatasetSource
    from seqrl.runners.trainer import Trainer

    sync = Sync(device)
    if compile_:
        torch._dynamo.reset()
    preset = load_agent("dt", {"trainer": {"device": str(device), "amp": amp, "compile": compile_, "cuda_graph": graph},
                               "source": {"batch_size": batch, "store_on_device": True}})
    policy = DecisionTransformer(preset.policy, TaskSpec.from_store(store, env))
    runner = Trainer(policy, DatasetSource(preset.source, store), preset, Path(run_root) / f"{variant}_b{batch}")
    K = policy.config.context_len

    def step():  # what Trainer.run does each iteration: sample + update (or one graph replay)
        return runner.iteration()[0]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = None
    for _ in range(W):
        out = step()
    sync()
    t_warm = time.perf_counter() - t0
    times = []
    for _ in range(R):
        sync()
        t0 = time.perf_counter()
        for _ in range(N):
            out = step()
        sync()
        times.append(time.perf_counter() - t0)
    loss = float(out["loss"]) if out is not None else float("nan")
    sps = [N / t for t in times]
    rec = {"impl": "seqrl", "variant": variant, "amp": runner.amp, "cuda_graph": runner.use_graph, "compile": bool(compile_ and device.type == "cuda"),
           "batch_size": batch, "context": K, "warmup": W, "steps": N, "repeats": R, "warmup_s": t_warm,
           "repeat_s": times, "steps_per_s": sps, "steps_per_s_median": statistics.median(sps),
           "samples_per_s_median": batch * statistics.median(sps), "final_loss": loss,
           "n_params": sum(p.numel() for p in policy.parameters())}
    if device.type == "cuda":
        rec["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    # window sampling alone (the store on the device)
    for _ in range(3):
        windows(store, batch, K, runner.gen)
    sync()
    t0 = time.perf_counter()
    for _ in range(N):
        windows(store, batch, K, runner.gen)
    sync()
    rec["sample_windows_per_s"] = N * batch / (time.perf_counter() - t0)
    if runner.writer is not None:
        runner.writer.close()
    log(f"  seqrl {variant:13s} B={batch:<4d} {rec['steps_per_s_median']:9.1f} steps/s "
        f"{rec['samples_per_s_median']:11.0f} windows/s  (warm-up {t_warm:.1f}s, repeats "
        f"{[round(s, 1) for s in sps]}, loss {loss:.3f})")
    del runner, policy
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def run_d3rlpy(args, device, episodes, T, W, N, R, limit):
    worker = ROOT / "experiments" / "d3rlpy_dt_worker.py"
    python = args.d3rlpy_python or sys.executable
    env = dict(os.environ)
    if args.d3rlpy_site:
        env["PYTHONPATH"] = args.d3rlpy_site  # replaces seqrl's site: d3rlpy pins its own gymnasium
    else:
        env.pop("PYTHONPATH", None)
    variants = args.d3rlpy_variants or ("fp32:64,fp32:256,compile_graph:64" if device.type == "cuda" else "fp32:64")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "d3.json"
        cmd = [python, str(worker), "--device", device.type, "--episodes", str(episodes), "--episode-len", str(T),
               "--steps", str(N), "--warmup", str(W), "--repeats", str(R), "--variants", variants,
               "--sample-iters", str(max(N, 5)), "--threads", str(args.threads), "--out", str(out)]
        log(f"  running: {' '.join(cmd)}  (PYTHONPATH={env.get('PYTHONPATH', '')!r})")
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)
        except OSError as e:
            log(f"  d3rlpy worker could not start: {e}")
            return {"skipped": f"could not start {python}: {e}"}
        timer = threading.Timer(limit, p.kill)
        timer.start()
        lines = []
        try:
            for ln in p.stdout:  # echo the worker's own progress lines live, keep everything
                lines.append(ln)
                if ln.startswith("[d3rlpy-worker]"):
                    log("  " + ln.rstrip())
            p.wait()
        finally:
            timer.cancel()
        output = "".join(lines)
        if p.returncode == 3:
            msg = "d3rlpy is not importable by " + python + (f" with PYTHONPATH={args.d3rlpy_site}" if args.d3rlpy_site
                                                            else "") + ": d3rlpy part skipped"
            log("  " + msg)
            return {"skipped": msg}
        timed_out = time.perf_counter() - t0 >= limit
        if p.returncode != 0:
            why = f"killed at its {limit:.0f}s limit" if timed_out else f"failed (exit {p.returncode})"
            log(f"  d3rlpy worker {why}; its output ends:\n{output[-3000:]}")
            if not out.exists():
                return {"skipped": f"worker {why}", "output_tail": output[-4000:]}
            log("  keeping the variants it finished")
        res = json.loads(out.read_text())
        res["worker_wall_s"] = time.perf_counter() - t0
        if p.returncode != 0:
            res["worker_error"] = why
        return res


# ---------------------------------------------------------------------------------------- evaluation
def timed_steps(one_step, sync, warmup, steps, repeats, max_seconds):
    """Per-step seconds: median over `repeats` of (time of up to `steps` steps / steps run). Each repeat
    stops early once it has used max_seconds/repeats (at least one step)."""
    for _ in range(warmup):
        one_step()
    sync()
    per, counts = [], []
    budget = max_seconds / repeats
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        n = 0
        while n < steps:
            one_step()
            n += 1
            if time.perf_counter() - t0 > budget:
                break
        sync()
        per.append((time.perf_counter() - t0) / n)
        counts.append(n)
    return statistics.median(per), per, counts


def make_policy(spec_store, env, K, device):
    from seqrl.policies.base import TaskSpec
    from seqrl.policies.dt import DecisionTransformer, DTConfig

    torch.manual_seed(0)
    pol = DecisionTransformer(DTConfig(context_len=K), TaskSpec.from_store(spec_store, env)).to(device)
    return pol.eval()


@torch.no_grad()
def bench_eval_synthetic(store, env, device, K, n_envs, warmup, steps, repeats, max_s, paper_max_s):
    from seqrl.data.store import Batch

    sync = Sync(device)
    pol = make_policy(store, env, K, device)
    rng = np.random.default_rng(0)
    obs_np = rng.standard_normal((n_envs, OBS_DIM)).astype(np.float64)  # Hopper gives float64
    rew_np = rng.uniform(0, 3, n_envs)
    max_t = env.max_episode_steps

    # --- seqrl: KV cache, one token at a time (what evaluate() runs)
    st = {"state": pol.initial_state(n_envs, device), "t": 0}

    def kv_step():
        obs = torch.as_tensor(obs_np, device=device)
        action, state = pol.act(obs, st["state"])
        action.cpu().numpy()
        st["t"] += 1
        done = np.full(n_envs, st["t"] % max_t == 0)
        st["state"] = pol.observe(state, torch.as_tensor(rew_np, dtype=torch.float32, device=device),
                                  torch.as_tensor(done, device=device))

    kv, kv_all, kv_n = timed_steps(kv_step, sync, warmup, steps, repeats, max_s)

    # --- paper: re-run predict over the last K steps every env step (steady state: full window)
    ps = {"obs": torch.zeros(n_envs, K, OBS_DIM, device=device), "act": torch.zeros(n_envs, K, ACT_DIM, device=device),
          "rtg": torch.full((n_envs, K), 3600.0, device=device),
          "ts": torch.arange(K, device=device).clamp(max=max_t).expand(n_envs, K).contiguous(),
          "rtg_now": torch.full((n_envs,), 3600.0, device=device), "t": torch.full((n_envs,), K, device=device)}
    zeros_k = torch.zeros(n_envs, K, device=device)
    false_k = torch.zeros(n_envs, K, dtype=torch.bool, device=device)
    mask = torch.ones(n_envs, K, dtype=torch.bool, device=device)
    zero_a = torch.zeros(n_envs, 1, ACT_DIM, device=device)

    def paper_step():
        obs = torch.as_tensor(obs_np, device=device).float()
        ps["obs"] = torch.cat([ps["obs"][:, 1:], obs[:, None]], 1)
        ps["rtg"] = torch.cat([ps["rtg"][:, 1:], ps["rtg_now"][:, None]], 1)
        ps["ts"] = torch.cat([ps["ts"][:, 1:], ps["t"][:, None]], 1)
        ps["act"] = torch.cat([ps["act"][:, 1:], zero_a], 1)
        b = Batch(obs=ps["obs"], next_obs=ps["obs"], act=ps["act"], rew=zeros_k, rtg=ps["rtg"], timestep=ps["ts"],
                  term=false_k, trunc=false_k, first=false_k, mask=mask, stream=torch.zeros_like(ps["ts"]))
        a = pol.head.to_env(pol.predict(b)[:, -1])
        ps["act"][:, -1] = a
        a.cpu().numpy()
        r = torch.as_tensor(rew_np, dtype=torch.float32, device=device)
        ps["rtg_now"] = ps["rtg_now"] - r
        ps["t"] = (ps["t"] + 1).clamp(max=max_t)

    pp, pp_all, pp_n = timed_steps(paper_step, sync, min(warmup, 2), steps, repeats, paper_max_s)
    rec = {"context": K, "window_tokens": 3 * K, "n_envs": n_envs,
           "kv_ms_per_step": kv * 1e3, "kv_env_steps_per_s": n_envs / kv, "kv_repeats_ms": [x * 1e3 for x in kv_all],
           "kv_steps_timed": kv_n,
           "paper_ms_per_step": pp * 1e3, "paper_env_steps_per_s": n_envs / pp,
           "paper_repeats_ms": [x * 1e3 for x in pp_all], "paper_steps_timed": pp_n,
           "kv_speedup": pp / kv}
    log(f"  K={K:<5d} window {3 * K:5d} tokens: KV cache {kv * 1e3:8.3f} ms/step ({n_envs / kv:10.0f} env-steps/s)"
        f" | paper re-encode {pp * 1e3:9.3f} ms/step ({n_envs / pp:9.0f} env-steps/s) | x{pp / kv:.1f}")
    del pol
    return rec


@torch.no_grad()
def bench_eval_real(store, env, device, Ks, n_envs, warmup, steps, repeats, max_s):
    import gymnasium as gym

    from seqrl.runners.evaluate import evaluate

    sync = Sync(device)
    t0 = time.perf_counter()
    envs = gym.make_vec(env.env_id, num_envs=n_envs, vectorization_mode="sync",
                        max_episode_steps=env.max_episode_steps)
    out = {"env_id": env.env_id, "n_envs": n_envs, "vectorization": "sync", "make_s": time.perf_counter() - t0,
           "runs": []}
    try:
        import gymnasium
        import mujoco
        out["gymnasium"], out["mujoco"] = gymnasium.__version__, mujoco.__version__
        rng = np.random.default_rng(0)
        st = {"obs": envs.reset(seed=0)[0]}

        def rand_step():
            st["obs"], *_ = envs.step(rng.uniform(-1, 1, (n_envs, ACT_DIM)).astype(np.float32))

        per, allp, cnt = timed_steps(rand_step, sync, warmup, steps, repeats, max_s)
        out["runs"].append({"policy": "random (env only)", "ms_per_step": per * 1e3, "env_steps_per_s": n_envs / per,
                            "repeats_ms": [x * 1e3 for x in allp], "steps_timed": cnt})
        log(f"  {env.env_id} x{n_envs} random actions (env alone): {per * 1e3:8.3f} ms/step ({n_envs / per:8.0f} env-steps/s)")
        for K in Ks:
            pol = make_policy(store, env, K, device)
            s = {"state": pol.initial_state(n_envs, device), "obs": envs.reset(seed=0)[0]}

            def dt_step():
                action, state = pol.act(torch.as_tensor(s["obs"], device=device), s["state"])
                s["obs"], rew, term, trunc, _ = envs.step(action.cpu().numpy())
                s["state"] = pol.observe(state, torch.as_tensor(rew, dtype=torch.float32, device=device),
                                         torch.as_tensor(term | trunc, device=device))

            per, allp, cnt = timed_steps(dt_step, sync, warmup, steps, repeats, max_s)
            out["runs"].append({"policy": f"seqrl DT KV cache K={K}", "context": K, "ms_per_step": per * 1e3,
                                "env_steps_per_s": n_envs / per, "repeats_ms": [x * 1e3 for x in allp],
                                "steps_timed": cnt})
            log(f"  {env.env_id} x{n_envs} seqrl DT K={K:<5d}: {per * 1e3:8.3f} ms/step ({n_envs / per:8.0f} env-steps/s)")
            del pol
    finally:
        envs.close()
    # evaluate() itself, once (random weights: episodes end early; its own env_steps_per_s)
    pol = make_policy(store, env, Ks[0], device)
    t0 = time.perf_counter()
    res = evaluate(pol, env, n_envs, seed=0, device=device)
    out["evaluate_fn"] = {"context": Ks[0], "episodes": n_envs, "wall_s": time.perf_counter() - t0,
                          "env_steps_per_s": res.env_steps_per_s, "length_mean": float(res.lengths.mean())}
    log(f"  evaluate(DT K={Ks[0]}, {env.env_id}, {n_envs} episodes): {res.env_steps_per_s:.0f} env-steps/s "
        f"(mean length {res.lengths.mean():.0f}, untrained weights)")
    return out


# ------------------------------------------------------------------------------------------- report
def fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def report(res) -> str:
    L = []
    info = res["info"]
    L.append("=" * 100)
    L.append(f"bench_gpu_dt  device={info['device']} ({info.get('gpu') or platform.processor() or 'cpu'})  "
             f"torch {info['torch']}  python {info['python']}  quick={info['quick']}")
    tr = res.get("train")
    if tr:
        L.append("")
        L.append(f"TRAINING  DT embed 128, 3 layers, 1 head, K=20, dropout 0.1; synthetic Hopper-shaped data "
                 f"({tr['episodes']} x {tr['episode_len']} steps)")
        L.append(f"{'impl':8s} {'variant':30s} {'B':>4s} {'steps/s':>10s} {'windows/s':>11s}   notes")
        for r in tr["seqrl"]:
            if "error" in r:
                L.append(f"{'seqrl':8s} {r['variant']:30s} {r['batch_size']:4d}  ERROR {r['error']}")
                continue
            name = r['variant'] + (" update" if r.get("cuda_graph") else " train_step")
            if r["variant"] != "fp32" and not (r.get("amp") or r.get("compile") or r.get("cuda_graph")):
                name = r["variant"] + " (=fp32 eager)"  # amp/compile/graph apply on CUDA only
            L.append(f"{'seqrl':8s} {name:30s} {r['batch_size']:4d} {fmt(r['steps_per_s_median']):>10s} "
                     f"{fmt(r['samples_per_s_median'], 0):>11s}   sampling alone {fmt(r['sample_windows_per_s'], 0)} windows/s")
        d3 = tr.get("d3rlpy") or {}
        if "results" in d3:
            for r in d3["results"]:
                name = r["variant"]
                if "skipped" in r or "error" in r:
                    L.append(f"{'d3rlpy':8s} {name:30s} {r['batch_size']:4d}  {r.get('skipped') or 'ERROR ' + r['error']}")
                    continue
                L.append(f"{'d3rlpy':8s} {name + ' fit loop':30s} {r['batch_size']:4d} {fmt(r['fit_steps_per_s_median']):>10s} "
                         f"{fmt(r['fit_samples_per_s_median'], 0):>11s}   sample+update as in fit()")
                L.append(f"{'d3rlpy':8s} {name + ' update() only':30s} {r['batch_size']:4d} "
                         f"{fmt(r['update_steps_per_s_median']):>10s} {fmt(r['update_samples_per_s_median'], 0):>11s}"
                         f"   sampling alone {fmt(r['sample_windows_per_s'], 0)} windows/s (CPU)")
            if d3.get("worker_error"):
                L.append(f"d3rlpy worker {d3['worker_error']}: variants not listed above did not finish")
        else:
            L.append(f"d3rlpy: {d3.get('skipped', 'not run')}")
        if res.get("ratios"):
            L.append("")
            L.append("ratios (windows/s, seqrl / d3rlpy fit loop, same batch size):")
            for q in res["ratios"]:
                L.append(f"  seqrl {q['seqrl']:14s} / d3rlpy {q['d3rlpy']:14s} B={q['batch_size']:<4d} = {q['ratio']:.2f}x")
    ev = res.get("eval")
    if ev and ev.get("synthetic"):
        L.append("")
        L.append(f"EVALUATION ROLLOUT  n_envs={ev['n_envs']}, fp32, no env (obs/reward/done moved to the device, "
                 f"action.cpu() each step, as evaluate() does)")
        L.append(f"{'K':>5s} {'tokens':>7s} {'KV ms/step':>11s} {'KV env-st/s':>12s} {'paper ms/step':>14s} "
                 f"{'paper env-st/s':>15s} {'KV speedup':>11s}")
        for r in ev["synthetic"]:
            if "error" in r:
                L.append(f"{r['context']:5d}  ERROR {r['error']}")
                continue
            L.append(f"{r['context']:5d} {r['window_tokens']:7d} {r['kv_ms_per_step']:11.3f} {r['kv_env_steps_per_s']:12,.0f} "
                     f"{r['paper_ms_per_step']:14.3f} {r['paper_env_steps_per_s']:15,.0f} {r['kv_speedup']:10.1f}x")
    if ev:
        real = ev.get("real_env")
        L.append("")
        if real and "runs" in real:
            L.append(f"REAL ENV  {real['env_id']} x{real['n_envs']} ({real['vectorization']} vector env, "
                     f"gymnasium {real.get('gymnasium')}, mujoco {real.get('mujoco')})")
            for r in real["runs"]:
                L.append(f"  {r['policy']:28s} {r['ms_per_step']:9.3f} ms/step {r['env_steps_per_s']:10,.0f} env-steps/s")
            if "evaluate_fn" in real:
                e = real["evaluate_fn"]
                L.append(f"  evaluate() K={e['context']}, {e['episodes']} episodes: {e['env_steps_per_s']:,.0f} env-steps/s "
                         f"(mean episode length {e['length_mean']:.0f}, untrained weights)")
        elif real:
            L.append(f"REAL ENV: skipped ({real.get('skipped')})")
    L.append("=" * 100)
    return "\n".join(L)


# --------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny dataset and step counts (smoke test)")
    ap.add_argument("--episodes", type=int, default=None, help="dataset episodes (default 1000; quick 20)")
    ap.add_argument("--episode-len", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=None, help="N timed steps per repeat (default 500; quick 3)")
    ap.add_argument("--train-warmup", type=int, default=None, help="W (default 50; quick 1)")
    ap.add_argument("--repeats", type=int, default=None, help="R (default 3; quick 2)")
    ap.add_argument("--big-batch", type=int, default=256)
    ap.add_argument("--big-batch-variants", choices=["best", "all"], default="best")
    ap.add_argument("--d3rlpy-site", default="", help="PYTHONPATH for the d3rlpy worker (e.g. /tmp/d3site)")
    ap.add_argument("--d3rlpy-python", default="", help="interpreter for the d3rlpy worker (default: this one)")
    ap.add_argument("--d3rlpy-steps", type=int, default=None, help="d3rlpy N (default 200; quick 3)")
    ap.add_argument("--d3rlpy-variants", default="", help="MODE:BATCH list (default fp32:64,fp32:256,compile_graph:64)")
    ap.add_argument("--d3rlpy-timeout", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=520.0,
                    help="whole-run budget: the d3rlpy worker's time limit shrinks to leave ~80 s for evaluation, "
                         "and the real-env part is skipped when under 30 s remain")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-d3rlpy", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--contexts", default="", help="eval K list (default 20,200,2000; quick 20,200)")
    ap.add_argument("--n-envs", type=int, default=50)
    ap.add_argument("--eval-steps", type=int, default=None, help="timed env steps per repeat (default 200; quick 3)")
    ap.add_argument("--paper-max-seconds", type=float, default=None, help="time cap per paper-approach run (default 12; quick 3)")
    ap.add_argument("--real-env", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: 1 on CPU, unchanged on CUDA)")
    ap.add_argument("--out", default="", help="output folder (default $OUT, else .)")
    args = ap.parse_args()

    q = args.quick
    episodes = args.episodes or (20 if q else 1000)
    T = args.episode_len
    W = args.train_warmup if args.train_warmup is not None else (1 if q else 50)
    N = args.train_steps or (3 if q else 500)
    R = args.repeats or (2 if q else 3)
    d3N = args.d3rlpy_steps or (3 if q else 200)
    Ks = [int(k) for k in (args.contexts or ("20,200" if q else "20,200,2000")).split(",")]
    eval_steps = args.eval_steps or (3 if q else 200)
    paper_max = args.paper_max_seconds or (3.0 if q else 12.0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA requested but torch.cuda.is_available() is False (use --device cpu)")
    args.threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)

    import gymnasium

    from seqrl.presets import load_env

    env = load_env("hopper")
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "gymnasium": gymnasium.__version__, "quick": q, "threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "argv": sys.argv[1:]}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    log(f"bench_gpu_dt: {info}")
    res = {"info": info}
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    store = make_store(episodes, T)
    log(f"store: {store}  built in {time.perf_counter() - t0:.1f}s")

    def save():
        res["wall_s"] = time.perf_counter() - t_start
        (out_dir / "bench_gpu_dt.json").write_text(json.dumps(res, indent=2, default=str))

    # ---------------------------------------------------------------------- 1. seqrl training
    if not args.skip_train:
        ensure_tensorboard()
        tr = {"episodes": episodes, "episode_len": T, "seqrl": []}
        res["train"] = tr
        log(f"\n[1] seqrl training throughput (W={W}, N={N}, R={R})")
        variants = [("fp32", False, False, False), ("bf16", True, False, False), ("fp32+graph", False, False, True),
                    ("bf16+graph", True, False, True), ("bf16+compile+graph", True, True, True)]
        with tempfile.TemporaryDirectory() as run_root:
            def one(name, amp, comp, graph, B):
                try:
                    tr["seqrl"].append(bench_seqrl_train(store, env, device, name, amp, comp, graph, B, W, N, R,
                                                         run_root))
                except Exception as e:  # noqa: BLE001
                    log(f"  seqrl {name} B={B} failed:\n{traceback.format_exc()}")
                    tr["seqrl"].append({"impl": "seqrl", "variant": name, "batch_size": B,
                                        "error": f"{type(e).__name__}: {e}"})
                save()

            for name, amp, comp, graph in variants:
                one(name, amp, comp, graph, 64)
            ok = [r for r in tr["seqrl"] if "error" not in r]
            if ok and args.big_batch:
                chosen = variants if args.big_batch_variants == "all" else \
                    [v for v in variants if v[0] == max(ok, key=lambda r: r["samples_per_s_median"])["variant"]]
                for name, amp, comp, graph in chosen:
                    one(name, amp, comp, graph, args.big_batch)
        with contextlib.suppress(Exception):
            torch._dynamo.reset()

        # ------------------------------------------------------------------ 2. d3rlpy training
        if args.skip_d3rlpy:
            tr["d3rlpy"] = {"skipped": "--skip-d3rlpy"}
        else:
            log(f"\n[2] d3rlpy training throughput (subprocess; W={W}, N={d3N}, R={R})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            limit = max(30.0, min(args.d3rlpy_timeout, args.budget_s - (time.perf_counter() - t_start) - 80))
            tr["d3rlpy"] = run_d3rlpy(args, device, episodes, T, W, d3N, R, limit)
        ratios = []
        d3 = {(r["variant"], r["batch_size"]): r for r in tr["d3rlpy"].get("results", [])
              if "fit_samples_per_s_median" in r}
        for s in tr["seqrl"]:
            if "samples_per_s_median" not in s:
                continue
            for (dv, db), d in d3.items():
                if db == s["batch_size"]:
                    ratios.append({"seqrl": s["variant"], "d3rlpy": dv, "batch_size": db,
                                   "ratio": s["samples_per_s_median"] / d["fit_samples_per_s_median"]})
        res["ratios"] = ratios
        save()

    # ---------------------------------------------------------------------- 3. evaluation
    if not args.skip_eval:
        ev = {"n_envs": args.n_envs, "contexts": Ks, "synthetic": []}
        res["eval"] = ev
        log(f"\n[3] evaluation rollout, n_envs={args.n_envs}, fake observations (steps<= {eval_steps}, R={R})")
        for K in Ks:
            try:
                ev["synthetic"].append(bench_eval_synthetic(store, env, device, K, args.n_envs, 10 if not q else 1,
                                                            eval_steps, R, 20.0 if not q else 3.0, paper_max))
            except Exception as e:  # noqa: BLE001
                log(f"  K={K} failed:\n{traceback.format_exc()}")
                ev["synthetic"].append({"context": K, "error": f"{type(e).__name__}: {e}"})
            save()
        left = args.budget_s - (time.perf_counter() - t_start)
        if args.real_env == "off":
            ev["real_env"] = {"skipped": "--real-env off"}
        elif args.real_env == "auto" and left < 30:
            ev["real_env"] = {"skipped": f"only {left:.0f}s of --budget-s left"}
            log(f"\n[3b] real env skipped: only {left:.0f}s of --budget-s left")
        else:
            log(f"\n[3b] real {env.env_id} vector env")
            try:
                import mujoco  # noqa: F401
                import gymnasium.envs.mujoco  # noqa: F401
                can = True
            except Exception as e:  # noqa: BLE001
                can, why = False, f"gymnasium's MuJoCo envs do not import here ({type(e).__name__}: {e})"
            if not can:
                log("  skipped: " + why)
                if args.real_env == "on":
                    raise SystemExit(why)
                ev["real_env"] = {"skipped": why}
            else:
                try:
                    ev["real_env"] = bench_eval_real(store, env, device, Ks, args.n_envs, 3 if not q else 1,
                                                     eval_steps, R, 20.0 if not q else 3.0)
                except Exception as e:  # noqa: BLE001
                    log(f"  real env failed:\n{traceback.format_exc()}")
                    ev["real_env"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
        save()

    save()
    text = report(res)
    log("\n" + text)
    (out_dir / "bench_gpu_dt.txt").write_text(text + "\n")
    log(f"wrote {out_dir / 'bench_gpu_dt.json'} and bench_gpu_dt.txt (total {time.perf_counter() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
