#!/usr/bin/env bash
# The world-model agent on a CPU (docs/results.md, "World-model agent"): DreamerV3's actor-critic on an S4 world
# model (agents/s4wm_agent.toml) and on a GRU one (agents/dreamer.toml), beside GTrXL-PPO (agents/gtrxl.toml) at
# the same env-step budget, on CartPole-v1 and the passive T-maze at corridor lengths 10 and 30. One CPU thread
# per run, WORKERS runs at once, 50 evaluation episodes each:
#
#   bash experiments/dreamer_cpu.sh OUT [WORKERS] [SEEDS] [ENV_STEPS] [TASKS] [AGENTS]
#
# e.g. bash experiments/dreamer_cpu.sh runs/dreamer 2 "0 1 2" 20000. EXTRA adds --set options to every run
# (EXTRA="--set source.train_ratio=256"; on a GPU machine EXTRA="--set trainer.device=cuda" runs them side by side on
# the GPU). A task is an env id (seqrl/DistractingMemory-v0 names its runs DistractingMemory-v0) or tmaze:LENGTH.
# Runs already done (OUT/NAME/eval.json) are skipped; the table is printed
# at the end from every OUT/*/eval.json.
set -eu
OUT=${1:?OUT}; WORKERS=${2:-2}; SEEDS=${3:-0}; STEPS=${4:-20000}
TASKS=${5:-CartPole-v1 tmaze:10 tmaze:30}; AGENTS=${6:-s4wm_agent dreamer gtrxl}
mkdir -p "$OUT"
jobs=()
for task in $TASKS; do
  env=${task%%:*}; extra=""; name=${env##*/}
  if [ "$env" = tmaze ]; then L=${task##*:}; extra="--set env.env_kwargs.length=$L"; name=tmaze$L; fi
  for agent in $AGENTS; do
    for s in $SEEDS; do
      dir=$OUT/${name}_${agent}_s$s
      [ -f "$dir/eval.json" ] && continue
      rm -rf "$dir"
      jobs+=("OMP_NUM_THREADS=1 seqrl train --agent $agent --env $env $extra --run-dir $dir --set source.env_steps=$STEPS --set trainer.seed=$s --set trainer.threads=1 --set trainer.eval_episodes=50 --set trainer.eval_every=0 ${EXTRA:-} > $dir.log 2>&1")
    done
  done
done
if [ ${#jobs[@]} -gt 0 ]; then printf '%s\n' "${jobs[@]}" | xargs -P "$WORKERS" -I{} sh -c '{}'; fi
python3 - "$OUT" <<'PY'
import json, pathlib, re, statistics, sys
rows = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/eval.json")):
    task, agent, seed = re.fullmatch(r"(.+?)_(s4wm_agent|dreamer|gtrxl|lstm_ppo)_s(\d+)", f.parent.name).groups()
    e = json.loads(f.read_text())
    cond = next(iter(k for k in e if isinstance(e[k], dict)))
    rows.setdefault((task, agent), []).append((e[cond]["return_mean"], e["step"], e["global_step"]))
print("| task | agent | seeds | return (50 episodes, mean over seeds) | per seed | updates | env steps |")
print("|---|---|---|---|---|---|---|")
for (task, agent), v in sorted(rows.items()):
    r = [x[0] for x in v]
    sd = f" ± {statistics.stdev(r):.2f}" if len(r) > 1 else ""
    print(f"| {task} | {agent} | {len(r)} | {statistics.mean(r):.2f}{sd} | {' / '.join(f'{x:.2f}' for x in r)} "
          f"| {v[0][1]} | {v[0][2]} |")
PY
