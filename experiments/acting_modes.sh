#!/usr/bin/env bash
# Acting modes of DT and DM (issue 30): train the quickstart-sized DT and DM (agents/dt_small.toml,
# agents/dm_small.toml) on seqrl/pendulum/mixed-v0 with seeds 0, 1, 2, two runs at a time on one thread
# each, then evaluate every checkpoint in both acting modes ("stream": today's default; "window": the
# last K steps re-encoded from an empty state at every env step, as trained) on the same env seeds
# (--seed 10000, 50 episodes, both target returns). Writes OUT/AGENT/sSEED/{checkpoint.pt,eval_MODE.txt}
# and prints the table (mean ± std over seeds of the per-checkpoint mean normalised score).
#
# The paired stage evaluates again through seqrl.runners.evaluate (the same episodes as `seqrl eval`) and
# prints the window - stream difference of every episode's normalised score, paired by env seed, with its
# standard error over the episodes of all seeds.
#
#   bash experiments/acting_modes.sh OUT [train|eval|table|paired|all]     (default: all)
set -eu
OUT=$(mkdir -p "${1:?OUT}" && cd "$1" && pwd); STAGE=${2:-all}
export OMP_NUM_THREADS=1
SEEDS=${SEEDS:-0 1 2}; EPISODES=50; EVAL_SEED=10000   # SEEDS="0 1" bash ... for fewer seeds

train_one() {  # AGENT SEED; a run that has its checkpoint is kept
  [ -f "$OUT/$1/s$2/checkpoint.pt" ] && return 0
  seqrl train --agent "$1" --dataset seqrl/pendulum/mixed-v0 --run-dir "$OUT/$1/s$2" --set trainer.seed="$2" \
    --set trainer.threads=1 --set trainer.eval_episodes=0 > "$OUT/$1.s$2.train.log" 2>&1
}
export -f train_one; export OUT

if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
  seqrl collect --env pendulum --quality mixed > /dev/null
  # two runs at a time, one thread each; DM first (an update costs several DT updates on CPU)
  for a in dm_small dt_small; do for s in $SEEDS; do echo "$a $s"; done; done \
    | xargs -P 2 -L 1 bash -c 'train_one $0 $1'
fi

if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
  for a in dt_small dm_small; do
    for s in $SEEDS; do
      [ -f "$OUT/$a/s$s/checkpoint.pt" ] || continue
      for m in stream window; do
        seqrl eval "$OUT/$a/s$s/checkpoint.pt" --act $m --episodes $EPISODES --seed $EVAL_SEED \
          > "$OUT/$a/s$s/eval_$m.txt" &
      done
      wait
    done
  done
fi

if [ "$STAGE" = table ] || [ "$STAGE" = all ]; then
  python - "$OUT" <<'PY'
import re, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
print("| agent | target | stream | window | window - stream (per seed) |")
print("|---|---|---|---|---|")
for a in ("dt_small", "dm_small"):
    scores = {}  # (mode, target) -> [score per seed]
    for s in sorted(out.glob(f"{a}/s*")):
        for m in ("stream", "window"):
            for line in (s / f"eval_{m}.txt").read_text().splitlines():
                hit = re.search(r"target=(-?\d+)\s*│[^│]*│\s*(-?[\d.]+) ± [\d.]+\s*│", line)
                if hit:
                    scores.setdefault((m, hit.group(1)), []).append(float(hit.group(2)))
    for t in sorted({t for _, t in scores}, key=float, reverse=True):
        st, wi = np.array(scores[("stream", t)]), np.array(scores[("window", t)])
        f = lambda x: f"{x.mean():.1f} ± {x.std(ddof=1) if len(x) > 1 else 0:.1f}"
        print(f"| {a.split('_')[0].upper()} | {t} | {f(st)} | {f(wi)} | {' / '.join(f'{d:+.1f}' for d in wi - st)} |")
PY
fi

if [ "$STAGE" = paired ] || [ "$STAGE" = all ]; then
  python - "$OUT" $EPISODES $EVAL_SEED <<'PY'
import sys
from pathlib import Path
import numpy as np
import torch
from seqrl.checkpoint import policy_from_checkpoint
from seqrl.policies.dt import set_act_mode
from seqrl.runners.evaluate import evaluate
torch.set_num_threads(1)
out, episodes, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print("| agent | target | seeds | window - stream, per episode (mean ± s.e.) | episodes better / worse / equal |")
print("|---|---|---|---|---|")
for a in ("dt_small", "dm_small"):
    diffs = {}
    runs = sorted(out.glob(f"{a}/s*/checkpoint.pt"))
    for ckpt in runs:
        policy, _, _ = policy_from_checkpoint(ckpt)
        for label, cond in policy.eval_protocol().conditions:
            score = {}
            for mode in ("stream", "window"):
                set_act_mode(policy, mode)
                res = evaluate(policy, policy.spec.env, episodes, seed, "cpu", cond, policy.spec.ref_scores)
                score[mode] = res.normalized[:, 0]
            diffs.setdefault(label, []).append(score["window"] - score["stream"])
    for label, d in diffs.items():
        d = np.concatenate(d)
        se = d.std(ddof=1) / np.sqrt(len(d))
        print(f"| {a.split('_')[0].upper()} | {label} | {len(runs)} | {d.mean():+.2f} ± {se:.2f} | "
              f"{(d > 0).sum()} / {(d < 0).sum()} / {(d == 0).sum()} |", flush=True)
PY
fi
