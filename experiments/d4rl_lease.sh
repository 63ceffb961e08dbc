#!/usr/bin/env bash
# One env's D4RL-style table in one GPU lease, from a SAC learner trained beforehand on another machine
# (experiments/sac_learner.py): the four datasets built from its checkpoints first, then seqrl's DT and DM
# and d3rlpy 2.8.1's DT on them (experiments/d4rl_table.sh: 20,000 updates of batch 64, 50 evaluation
# episodes, seeds SEEDS, default 0-4).
#
#   ENV=hopper EXPERT_STEP=280000 setsid bash experiments/d4rl_lease.sh LEARNER_WORKDIR OUT &
#
# LEARNER_WORKDIR holds ENV/sb3/<run>/ with the expert's and the medium checkpoint's model zips, evals.json
# and the transition chunks up to the medium step (what `seqrl collect` reads). Datasets go to
# MINARI_DATASETS_PATH (default /tmp/minari); everything else to OUT: lease.log (timeline and the datasets'
# returns), col_*.log, table.log (experiments/offline_table.py's output) and table/ (every run's
# result.json). QUALITIES (default "medium-replay medium-expert medium") chooses the rows, in that order;
# RUNS (default 16) runs share the GPU at once; no run starts after BY seconds (default 780) from the
# table's start, so that a lease of known length ends with the runs it started finished. The datasets the
# rows need are built before any run starts: medium and expert (1M transitions each, 16 envs) rolled out beside 8
# training runs went at about 900 env steps/s each instead of about 3,500 (docs/history.md; the rollouts' policy then
# ran on 16 torch threads, now on one). D3RLPY_SITE (default /tmp/d3site) is d3rlpy's PYTHONPATH. DRY=1
# rehearses it on the CPU with tiny budgets. d4rl_table.sh's EXTRA, DM_ROWS and FROM pass through (FROM=an
# earlier table's JSON: its runs are not run again and join the table).
# The GPU machine has no network: the seqrl side's wheels (gymnasium 1.4.0, farama-notifications, minari 0.5.4,
# mujoco and mujoco-core 4.0.1, glfw, stable-baselines3 2.9.2) go in with `pip install --no-index --no-deps
# --target /tmp/site`, d3rlpy's (the list in experiments/bench_gpu_dt.py, plus the same mujoco, mujoco-core and
# glfw wheels) into /tmp/d3site; then PYTHONPATH=/tmp/site:$PWD and an MPS server (nvidia-cuda-mps-control -d).
set -u
L=${1:?LEARNER_WORKDIR}; R=${2:?OUT}; mkdir -p "$R"; exec > "$R/lease.log" 2>&1
t0=$SECONDS; say() { echo "[+$((SECONDS - t0)) s] $*"; }
E=${ENV:?ENV}; XS=${EXPERT_STEP:?EXPERT_STEP}
export MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-/tmp/minari} PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then NS=3000; S=40; DEV=cpu; RUNS=${RUNS:-2}; else NS=1000000; S=20000; DEV=cuda; fi
col() { python3 -m seqrl.cli collect --env "$E" --quality "$1" --workdir "$L" --set collect.train_steps="$XS" \
          --set collect.n_envs=16 --set collect.n_steps=$NS > "$R/col_$1.log" 2>&1; }
say start; nvidia-smi -L 2>/dev/null
Q=${QUALITIES:-medium-replay medium-expert medium}
has() { case " $Q " in *" $1 "*) return 0;; esac; return 1; }
built=""  # the datasets the rows need, medium and expert (beside each other) for medium-expert too
if has medium-replay; then col medium-replay; built="medium-replay"; fi
if has medium || has medium-expert; then col medium & built="$built medium"; fi
if has medium-expert; then col expert & built="$built expert"; fi
wait; if has medium-expert; then col medium-expert; built="$built medium-expert"; fi; say datasets built: $built
python3 - "$E" $built <<'PY'
import sys

import minari
import numpy as np

from seqrl.presets import load_env
from seqrl.runners.evaluate import normalized_score

env = load_env(sys.argv[1])
for q in sys.argv[2:]:
    eps = list(minari.load_dataset(env.dataset_id(q)).iterate_episodes())
    ret = np.array([e.rewards.sum() for e in eps])
    print(f"{q}: {len(eps)} episodes, {sum(len(e.rewards) for e in eps)} transitions, mean return {ret.mean():.1f}, "
          f"normalised {normalized_score([ret.mean()], (env.ref_min_score, env.ref_max_score))[0]:.1f}", flush=True)
PY
ENVS=$E QUALITIES="$Q" SEEDS=${SEEDS:-0,1,2,3,4} BC_ROWS=0 NOSE_ROWS=0 \
  D3RLPY_SITE=${D3RLPY_SITE:-/tmp/d3site} DEVICE=$DEV START_WITHIN=${BY:-780} \
  bash experiments/d4rl_table.sh $S 64 0 "$R/table" "${RUNS:-16}" > "$R/table.log" 2>&1
say all done
