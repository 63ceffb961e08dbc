#!/usr/bin/env bash
# Build the medium and medium-replay datasets of hopper, halfcheetah and walker2d with `seqrl collect`,
# the three envs in parallel, with SAC training cut to a wall-clock budget (for a GPU lease):
#
#   bash experiments/d4rl_collect.sh SAC_SECONDS WORKDIR [--set KEY=VALUE ...]
#
# Each env's SAC runs under `timeout SAC_SECONDS`; its checkpoints (every 10,000 steps) survive the cut,
# and the datasets are then built with collect.train_steps set to the newest checkpoint, so the last
# checkpoint is the "final" policy. That is the same as running, from scratch,
#   seqrl collect --env ENV --quality medium --set collect.train_steps=N --set collect.checkpoint_every=10000
# with N printed at the end (SAC has no schedule that depends on the total). Rerunning resumes.
# ENVS="hopper" limits the envs. Minari datasets go to $MINARI_DATASETS_PATH (or Minari's default), logs to WORKDIR/*.log.
set -u
secs=${1:?SAC_SECONDS}
work=${2:?WORKDIR}
mkdir -p "$work"
envs=${ENVS:-hopper halfcheetah walker2d}
shift 2
common=(--workdir "$work" --set collect.checkpoint_every=10000 --set collect.n_envs=16 "$@")  # later --set wins

for e in $envs; do  # stage 1: SAC, cut at the budget (a finished training just ends sooner)
  OMP_NUM_THREADS=2 timeout -s INT "$secs" seqrl collect --env "$e" --quality expert "${common[@]}" \
    >"$work/sac_$e.log" 2>&1 &
done
wait

for e in $envs; do  # stage 2: medium (1M steps from the checkpoint nearest 1/3 of the final return), medium-replay
  last=$(ls "$work/$e"/sb3/*/model_*.zip 2>/dev/null | sed 's/.*model_\([0-9]*\)\.zip/\1/' | sort -n | tail -1)
  if [ -z "$last" ]; then echo "$e: no SAC checkpoint; raise SAC_SECONDS" >&2; continue; fi
  echo "$e: collect.train_steps=$last"
  ( for q in medium-replay medium; do
      OMP_NUM_THREADS=2 seqrl collect --env "$e" --quality "$q" "${common[@]}" --set "collect.train_steps=$last" || exit 1
    done ) >"$work/datasets_$e.log" 2>&1 &
done
wait
for e in $envs; do
  echo "== $e"; cat "$work/$e"/sb3/*/evals.json 2>/dev/null | tr -d '\n '; echo; grep -a "dataset" "$work/datasets_$e.log"
done
