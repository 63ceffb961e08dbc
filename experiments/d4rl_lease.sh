#!/usr/bin/env bash
# One env's D4RL-style table in one GPU lease, from a SAC learner trained beforehand on another machine
# (experiments/sac_learner.py): the four datasets built from its checkpoints, then seqrl's DT and DM and
# d3rlpy 2.8.1's DT on medium-replay, medium-expert and medium, 5 seeds each (experiments/d4rl_table.sh:
# 20,000 updates of batch 64, 50 evaluation episodes), and seeds 5-7 of both DTs on medium-expert if time
# is left once medium-replay is done.
#
#   ENV=hopper EXPERT_STEP=300000 setsid bash experiments/d4rl_lease.sh LEARNER_WORKDIR OUT &
#
# LEARNER_WORKDIR holds ENV/sb3/<run>/ with the expert's and the medium checkpoint's model zips, evals.json
# and the transition chunks up to the medium step (what `seqrl collect` reads). Datasets go to
# MINARI_DATASETS_PATH (default /tmp/minari); everything else to OUT: lease.log (timeline and the datasets'
# returns), mr.log, mem.log and more.log (the three experiments/offline_table.py invocations) and table/
# (every run's result.json). The medium-replay runs start at once (8 at a time) while medium and expert
# are rolled out (1M transitions each, 16 envs); medium-expert and medium then run 16 at a time. No run
# starts after MR_BY / MEM_BY / MORE_BY seconds (defaults 900, 540, 840; MR and MORE from the first
# table's start, MEM from its own), so that the lease ends with the runs it started finished.
# D3RLPY_SITE (default /tmp/d3site) is d3rlpy's PYTHONPATH (d4rl_table.sh). DRY=1 rehearses it all on
# the CPU with tiny budgets (3,000-transition datasets, 40 updates, 2 runs at a time).
set -u
L=${1:?LEARNER_WORKDIR}; R=${2:?OUT}; mkdir -p "$R"; exec > "$R/lease.log" 2>&1
t0=$SECONDS; say() { echo "[+$((SECONDS - t0)) s] $*"; }
E=${ENV:?ENV}; XS=${EXPERT_STEP:?EXPERT_STEP}; SEEDS=${SEEDS:-0,1,2,3,4}
export MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-/tmp/minari} PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then NS=3000; S=40; DEV=cpu; WK=2; else NS=1000000; S=20000; DEV=cuda; WK=8; fi
col() { python3 -m seqrl.cli collect --env "$E" --quality "$1" --workdir "$L" --set collect.train_steps="$XS" \
          --set collect.n_envs=16 --set collect.n_steps=$NS; }
tab() {  # QUALITIES WORKERS START_WITHIN LOGNAME
  ENVS=$E QUALITIES="$1" SEEDS=$SEEDS BC_ROWS=0 NOSE_ROWS=0 D3RLPY_SITE=${D3RLPY_SITE:-/tmp/d3site} DEVICE=$DEV \
    START_WITHIN=$3 bash experiments/d4rl_table.sh $S 64 0 "$R/table" "$2" > "$R/$4.log" 2>&1
}
say start; nvidia-smi -L 2>/dev/null
col medium-replay; say medium-replay built
T0=$(date +%s)
(tab medium-replay $WK "${MR_BY:-900}" mr
 while [ ! -f "$R/.me_built" ]; do sleep 5; done
 left=$(( ${MORE_BY:-840} - ($(date +%s) - T0) ))
 if [ $left -gt 0 ]; then SEEDS=5,6,7 DM_ROWS=0 tab medium-expert 6 $left more; fi) &
col medium > "$R/col_medium.log" 2>&1 & p1=$!; col expert > "$R/col_expert.log" 2>&1 & p2=$!; wait $p1 $p2
say medium and expert built; col medium-expert; say medium-expert built; touch "$R/.me_built"
python3 - "$E" <<'PY'
import sys

import minari
import numpy as np

from seqrl.presets import load_env
from seqrl.runners.evaluate import normalized_score

env = load_env(sys.argv[1])
for q in ("medium-replay", "medium", "expert", "medium-expert"):
    eps = list(minari.load_dataset(env.dataset_id(q)).iterate_episodes())
    ret = np.array([e.rewards.sum() for e in eps])
    print(f"{q}: {len(eps)} episodes, {sum(len(e.rewards) for e in eps)} transitions, mean return {ret.mean():.1f}, "
          f"normalised {normalized_score([ret.mean()], (env.ref_min_score, env.ref_max_score))[0]:.1f}", flush=True)
PY
tab "medium-expert medium" $((2 * WK)) "${MEM_BY:-540}" mem &
wait; say all done
