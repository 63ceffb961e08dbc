#!/usr/bin/env bash
# The world-model agent on a MuJoCo task beside stable-baselines3's SAC at the same env-step budget, every seed of
# both at once on one GPU machine (docs/results.md, "World-model agent on HalfCheetah"): agents/s4wm_agent.toml on the
# GPU (the update as a CUDA graph, the trainer's default), SAC at SB3's defaults on the CPU with one thread.
# 10 evaluation episodes each (the agent's mode, SAC deterministic).
#
#   bash experiments/wm_agent_mujoco.sh OUT [ENV_PRESET] [GYM_ID] [ENV_STEPS] [SEEDS]
#
# e.g. bash experiments/wm_agent_mujoco.sh /tmp/hc halfcheetah HalfCheetah-v5 50000 "0 1 2". EXTRA adds --set options
# to the agent's runs (EXTRA="--set policy.entropy=3e-3").
set -u
OUT=${1:?OUT}; ENV=${2:-halfcheetah}; GYM=${3:-HalfCheetah-v5}; STEPS=${4:-50000}; SEEDS=${5:-0 1 2}
mkdir -p "$OUT"
for s in $SEEDS; do
  OMP_NUM_THREADS=2 python3 -m seqrl.cli train --agent s4wm_agent --env "$ENV" --run-dir "$OUT/wm_s$s" \
    --set source.env_steps="$STEPS" --set trainer.device=cuda --set trainer.threads=2 --set trainer.seed="$s" \
    --set trainer.eval_episodes=10 --set trainer.eval_every=0 ${EXTRA:-} > "$OUT/wm_s$s.log" 2>&1 &
  OMP_NUM_THREADS=1 python3 experiments/sb3_reference.py --algo sac --env "$GYM" --steps "$STEPS" --seeds "$s" \
    --episodes 10 --json "$OUT/sac_s$s.json" > "$OUT/sac_s$s.log" 2>&1 &
done
wait
for s in $SEEDS; do
  python3 - "$OUT" "$s" <<'PY'
import json, sys
out, s = sys.argv[1], sys.argv[2]
wm = json.load(open(f"{out}/wm_s{s}/eval.json"))[""]
sac = json.load(open(f"{out}/sac_s{s}.json"))["runs"][0]
print(f"seed {s}: s4wm_agent {wm['return_mean']:.1f} ± {wm['return_std']:.1f}, "
      f"SB3 SAC {sac['return_mean']:.1f} ± {sac['return_std']:.1f}")
PY
done
