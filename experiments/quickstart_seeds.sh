#!/usr/bin/env bash
# The quickstart's BC and DT (agents/bc_small.toml, dt_small.toml) on seqrl/pendulum/mixed-v0 with seeds 0, 1, 2,
# in this checkout and in another one (e.g. the main before a change), two runs at a time, 50 evaluation
# episodes each; one eval.json per run under OUT/{this,other}/AGENT/sSEED. A checkout from before the one
# Trainer takes runner.* keys.
#
#   bash experiments/quickstart_seeds.sh OTHER_CHECKOUT OUT
set -u
OTHER=$(cd "${1:?OTHER_CHECKOUT}" && pwd); OUT=$(mkdir -p "${2:?OUT}" && cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
export OMP_NUM_THREADS=1
seqrl collect --env pendulum --quality mixed > /dev/null
keys=trainer; [ -f "$OTHER/seqrl/runners/trainer.py" ] || keys=runner
for s in 0 1 2; do
  for a in dt_small bc_small; do
    (cd "$HERE" && python -m seqrl.cli train --agent $a --dataset seqrl/pendulum/mixed-v0 --run-dir "$OUT/this/$a/s$s" \
       --set trainer.seed=$s --set trainer.eval_episodes=50 --set trainer.eval_every=0 > /dev/null) &
    (cd "$OTHER" && PYTHONPATH="$OTHER" python -m seqrl.cli train --agent $a --dataset seqrl/pendulum/mixed-v0 \
       --run-dir "$OUT/other/$a/s$s" --set $keys.seed=$s --set $keys.eval_episodes=50 --set $keys.eval_every=0 > /dev/null) &
    wait
  done
done
