#!/usr/bin/env bash
# The D4RL-style table: DT, BC and DM on the medium and medium-replay datasets of hopper, halfcheetah and
# walker2d (built by experiments/d4rl_collect.sh), and DM without self-evolution on medium-replay; 3 seeds,
# 50 episodes per target return, runs in parallel on one GPU:
#
#   bash experiments/d4rl_table.sh STEPS BATCH BC_STEPS OUT [WORKERS]
#
# DT is agents/dt.toml (Chen et al. 2021's Gym settings) and DM is agents/dm.toml at DT's size (width 128,
# 3 layers; the paper's own model is 768 x 24), both trained for STEPS updates of BATCH windows with a
# warm-up of STEPS/10; DM's self-evolution schedule spans the same STEPS and refreshes its earlier policy
# 40 times, as the authors' 40 iterations. BC is agents/bc.toml for BC_STEPS updates.
# QUALITIES="medium-replay" limits the datasets (and sets their order: QUALITIES="medium-replay medium");
# ENVS="walker2d" limits the envs; D3RLPY_SITE=/tmp/d3site adds d3rlpy 2.8.1's DT (agent d3rlpy_dt of
# offline_table.py: the paper's size, same STEPS, BATCH and warm-up, same seeds and evaluation envs);
# EXTRA="DT-fp32=dt:...;trainer.amp=false" adds agent specs (offline_table.py's form, comma-separated) to every
# group; BC_ROWS=0 leaves BC out; DM_ROWS=0 leaves DM out; NOSE_ROWS=0 leaves DM without self-evolution out;
# SEEDS="2,1,0" sets the seeds and their order (default 0,1,2); START_WITHIN=SECONDS starts no run after that
# time (for a lease of bounded length); DEVICE=cpu for a smoke test. Rerunning skips finished runs
# (offline_table.py); FROM=JSON counts the runs of an earlier table's JSON as finished (offline_table.py --from).
set -eu
S=${1:?STEPS}; B=${2:?BATCH}; SBC=${3:?BC_STEPS}; OUT=${4:?OUT}; WORKERS=${5:-8}
W=$((S / 10)); I=$((S / 40))
DT="dt:trainer.steps=$S;trainer.warmup_steps=$W;source.batch_size=$B"
DM="dm:policy.embed_dim=128;policy.n_layers=3;policy.pser_steps=$S;policy.pser_interval=$I;trainer.steps=$S;trainer.warmup_steps=$W;source.batch_size=$B"
BC="bc:trainer.steps=$SBC"
# one group per quality, in QUALITIES order; DM without self-evolution joins the medium-replay group, so
# that with the seed-major order each seed's noisy-data comparison is run together
groups=()
for q in ${QUALITIES:-medium medium-replay}; do
  ds=(); for e in ${ENVS:-hopper halfcheetah walker2d}; do ds+=("seqrl/$e/$q-v0"); done
  agents="DT=$DT"
  if [ "${BC_ROWS:-1}" = 1 ]; then agents+=",BC=$BC"; fi
  if [ -n "${D3RLPY_SITE:-}" ]; then agents+=",d3rlpy-DT=d3rlpy_dt:trainer.steps=$S;trainer.warmup_steps=$W;source.batch_size=$B"; fi
  if [ "${DM_ROWS:-1}" = 1 ]; then
    agents+=",DM=$DM"
    if [ "$q" = medium-replay ] && [ "${NOSE_ROWS:-1}" = 1 ]; then agents+=",DM-noSE=$DM;policy.pser=false"; fi
  fi
  if [ -n "${EXTRA:-}" ]; then agents+=",$EXTRA"; fi
  groups+=(--group "$(IFS=,; echo "${ds[*]}")" "$agents")
done
python3 experiments/offline_table.py --device "${DEVICE:-cuda}" --workers "$WORKERS" --episodes 50 --seeds "${SEEDS:-0,1,2}" \
  --out "$OUT" ${START_WITHIN:+--start-within "$START_WITHIN"} ${FROM:+--from "$FROM"} ${D3RLPY_SITE:+--d3rlpy-site "$D3RLPY_SITE"} "${groups[@]}"
