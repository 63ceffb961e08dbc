#!/usr/bin/env bash
# Build the D4RL-style datasets (medium-replay, medium, expert, medium-expert) of hopper, halfcheetah and
# walker2d with `seqrl collect`, the envs in parallel, with the SAC learner (seqrl.data.sac.GraphSAC: a CUDA
# graph per gradient step on a GPU) cut to a wall-clock budget (for a GPU lease):
#
#   bash experiments/d4rl_collect.sh SAC_SECONDS WORKDIR [--set KEY=VALUE ...]
#
# Stage 1 is experiments/sac_learner.py: each env's SAC under a budget of SAC_SECONDS, then every checkpoint
# rated (the learning curve, WORKDIR/sac_learner.json); its checkpoints (every 50,000 steps) survive the cut,
# and the datasets are then built with collect.train_steps set to the newest checkpoint, so the last
# checkpoint is the "final" policy. That is the same as running, from scratch,
#   seqrl collect --env ENV --quality medium --set collect.train_steps=N --set collect.train_envs=8
# with N printed at the end (SAC has no schedule that depends on the total). Rerunning resumes.
# ENVS="hopper" limits the envs. Minari datasets go to $MINARI_DATASETS_PATH (or Minari's default), logs to
# WORKDIR/*.log. Stage 2 builds medium-replay, then rolls out medium and expert at once, then concatenates
# medium-expert.
set -u
secs=${1:?SAC_SECONDS}
work=${2:?WORKDIR}
mkdir -p "$work"
envs=${ENVS:-hopper halfcheetah walker2d}
shift 2
sets=(--set collect.train_envs=8 --set collect.n_envs=16 "$@")  # later --set wins
common=(--workdir "$work" "${sets[@]}")

# stage 1: SAC, cut at the budget (a finished training just ends sooner), then its checkpoints rated
OMP_NUM_THREADS=2 python3 "$(dirname "$0")/sac_learner.py" --envs $envs --seconds "$secs" "${common[@]}" \
  --out "$work/sac_learner.json" >"$work/sac_learner.log" 2>&1

for e in $envs; do  # stage 2: the datasets from the newest checkpoint
  last=$(ls "$work/$e"/sb3/*/model_*.zip 2>/dev/null | sed 's/.*model_\([0-9]*\)\.zip/\1/' | sort -n | tail -1)
  if [ -z "$last" ]; then echo "$e: no SAC checkpoint; raise SAC_SECONDS" >&2; continue; fi
  echo "$e: collect.train_steps=$last"
  q() { OMP_NUM_THREADS=2 python3 -m seqrl.cli collect --env "$e" --quality "$1" "${common[@]}" --set "collect.train_steps=$last"; }
  ( q medium-replay && { q medium & q expert & wait; } && q medium-expert ) >"$work/datasets_$e.log" 2>&1 &
done
wait
for e in $envs; do
  echo "== $e"; cat "$work/$e"/sb3/*/evals.json 2>/dev/null | tr -d '\n '; echo; grep -a "dataset" "$work/datasets_$e.log"
done
