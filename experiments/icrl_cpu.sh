#!/usr/bin/env bash
# In-context RL at a reduced size (docs/icrl.md): DPT and AD, each on the transformer and the Mamba backbone,
# on the 5-arm Gaussian bandit (regret at step 500 beside Thompson sampling and UCB in the same run) and on
# Dark Room 10x10, H=100 (return per episode over held-out goals). Two pipelines run side by side, one CPU
# thread each. Every size is a variable: the full-size GPU run sets them, e.g.
#   OUT=runs/icrl_full DEVICE=cuda BANDIT_TASKS=100000 STEPS=100000 K_BANDIT=500 K_ROOM=400 EMBED=128 LAYERS=4 \
#   HEADS=4 THREADS=0 bash experiments/icrl_cpu.sh
# PARTS=linear (not in the default PARTS) runs the same four models on the linear bandit, DPT's protocol (the env's
# defaults: 10 arms with features in R^2 shared by every task, theta per task, noise 0.3, horizon 200): DPT data and
# LinUCB histories (AD), regret at step 200 beside LinUCB, UCB, ... in the same run (writes $OUT/eval_linear), e.g.
#   OUT=runs/icrl_linear PARTS=linear STEPS=3000 bash experiments/icrl_cpu.sh
# PARTS=room_adeps (not in the default PARTS) measures AD-epsilon (Zisman et al. 2024) on Dark Room: AD and AD-Mamba
# trained on a noisy demonstrator's histories (--quality ad-noisy: the shortest-path policy with injected noise
# falling from 1 to 0 over ROOM_AD_EPISODES episodes) beside the same models on the Q-learning histories (ad-q; reused
# when $OUT/room_ad and $OUT/room_ad_mamba already hold checkpoints), one at a time (writes $OUT/eval_room_adeps), e.g.
#   OUT=runs/icrl_adeps PARTS=room_adeps STEPS=3000 bash experiments/icrl_cpu.sh
# PARTS=ad_protocol (not in the default PARTS) runs AD's own protocol: Dark Room 9x9, H=20, start at the centre, and
# Dark Key-to-Door 9x9, H=50; AD and AD-Mamba on AD-epsilon histories (ad-noisy) and on Q-learning histories (ad-q),
# with K spanning AD_CONTEXT_EPISODES episodes, evaluated online over AD_EVAL_EPISODES episodes on held-out tasks
# (writes $OUT/eval_room9 and $OUT/eval_keydoor; its datasets live in $OUT/minari_ad, apart from the 10x10 room's), e.g.
#   OUT=runs/icrl_ad PARTS=ad_protocol STEPS=3000 bash experiments/icrl_cpu.sh
set -euo pipefail
OUT=${OUT:-runs/icrl_cpu}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}                # per pipeline (two run side by side)
BANDIT_TASKS=${BANDIT_TASKS:-2000}   # training bandits (DPT pretrains on 100,000)
LINEAR_TASKS=${LINEAR_TASKS:-$BANDIT_TASKS}  # training linear bandits (PARTS=linear)
ROOM_DPT_EPISODES=${ROOM_DPT_EPISODES:-50}   # random-walk contexts per training goal (80 goals)
ROOM_AD_EPISODES=${ROOM_AD_EPISODES:-40}     # Q-learning episodes per training goal
STEPS=${STEPS:-2000}                 # updates per model
BATCH=${BATCH:-32}
K_BANDIT=${K_BANDIT:-50}             # context transitions per training sample
K_ROOM=${K_ROOM:-100}
K_LINEAR=${K_LINEAR:-$K_BANDIT}      # the full-size run: 200, the linear bandit's horizon
GTRXL=${GTRXL:-0}                    # 1: the bandit parts train DPT and AD on GTrXL too, evaluated in the same run
SEED=${SEED:-0}                      # trainer.seed of every model (the evaluation's tasks and seeds stay)
BANDIT_TOKENS=${BANDIT_TOKENS:-"s ar"}  # policy.tokens on the bandits (docs/icrl.md: "s a r" learned far slower there)
ROOM_TOKENS=${ROOM_TOKENS:-"s a r"}
EMBED=${EMBED:-32}
LAYERS=${LAYERS:-2}
HEADS=${HEADS:-2}
TEST_TASKS=${TEST_TASKS:-20}         # held-out tasks (Dark Room has 20)
SEEDS=${SEEDS:-5}
ROOM_EPISODES=${ROOM_EPISODES:-20}   # episodes per in-context trial on Dark Room
AD_HISTORY_EPISODES=${AD_HISTORY_EPISODES:-100}  # PARTS=ad_protocol: episodes per learning history
AD_CONTEXT_EPISODES=${AD_CONTEXT_EPISODES:-4}    # ... episodes per training context (K = this x the horizon)
AD_EVAL_EPISODES=${AD_EVAL_EPISODES:-200}        # ... episodes per in-context trial
KEYDOOR_TASKS=${KEYDOOR_TASKS:-500}              # ... training key/door pairs (of 5,184)
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
# absolute: Minari 0.5.4 fails to write a dataset under a relative MINARI_DATASETS_PATH
export MINARI_DATASETS_PATH=$(realpath -m "${MINARI_DATASETS_PATH:-$OUT/minari}")

common=(--set "policy.embed_dim=$EMBED" --set "policy.n_layers=$LAYERS" --set "policy.n_heads=$HEADS"
        --set "trainer.steps=$STEPS" --set "source.batch_size=$BATCH" --set "trainer.threads=$THREADS"
        --set "trainer.checkpoint_every=$STEPS" --set "trainer.seed=$SEED" --device "$DEVICE")
mamba=(--set policy.expand=1 --set policy.d_state=8)   # CPU-sized Mamba (as agents/dm_small.toml)

train() {  # agent dataset env K run-name [extra --set ...]
  local agent=$1 ds=$2 env=$3 k=$4 name=$5; shift 5
  seqrl train --agent "$agent" --dataset "$ds" --env "$env" --run-dir "$OUT/$name" "${common[@]}" \
    --set "policy.context_len=$k" "$@" > "$OUT/$name.log" 2>&1
  grep -o "[0-9]*/$STEPS update.*" "$OUT/$name.log" | tail -1 | sed "s|^|$name: |"
}

bandits() {  # family env-id AD-source-quality tasks K run-prefix: DPT and AD, transformer and Mamba, then evaluation
  local fam=$1 env=$2 adq=$3 tasks=$4 k=$5 p=$6 tok=(--set "policy.tokens=\"$BANDIT_TOKENS\"")
  seqrl collect --env "$fam" --quality dpt --set "tasks=$tasks"
  seqrl collect --env "$fam" --quality "$adq" --set "tasks=$tasks"
  train dpt "seqrl/$fam/dpt-v0" "$env" "$k" "${p}_dpt" "${tok[@]}"
  train ad "seqrl/$fam/$adq-v0" "$env" "$k" "${p}_ad" "${tok[@]}"
  train dpt_mamba "seqrl/$fam/dpt-v0" "$env" "$k" "${p}_dpt_mamba" "${mamba[@]}" "${tok[@]}"
  train ad_mamba "seqrl/$fam/$adq-v0" "$env" "$k" "${p}_ad_mamba" "${mamba[@]}" "${tok[@]}"
  local models=("$OUT/${p}"_{dpt,ad,dpt_mamba,ad_mamba}/checkpoint.pt) names=(--name dpt-transformer
                --name ad-transformer --name dpt-mamba --name ad-mamba)
  if [ "$GTRXL" = 1 ]; then
    train dpt "seqrl/$fam/dpt-v0" "$env" "$k" "${p}_dpt_gtrxl" --set policy.backbone=gtrxl "${tok[@]}"
    train ad "seqrl/$fam/$adq-v0" "$env" "$k" "${p}_ad_gtrxl" --set policy.backbone=gtrxl "${tok[@]}"
    models+=("$OUT/${p}"_{dpt,ad}_gtrxl/checkpoint.pt) names+=(--name dpt-gtrxl --name ad-gtrxl)
  fi
  # Mamba acts past its trained context (the horizon's pulls > K): --extrapolate, labelled so in docs/icrl.md
  seqrl icrl "${models[@]}" "${names[@]}" --tasks "$TEST_TASKS" --seeds "$SEEDS" --episodes 1 --mode online \
    --mode offline --extrapolate --device "$DEVICE" --out "$OUT/eval_$p" > "$OUT/eval_$p.log" 2>&1
}

bandit() { bandits gaussian-bandit seqrl/GaussianBandit-v0 ad-ucb "$BANDIT_TASKS" "$K_BANDIT" bandit; }
# DPT's linear bandit: the env's defaults (arms=10, dim=2, noise=0.3, horizon=200, protocol="dpt")
linear() { bandits linear-bandit seqrl/LinearBandit-v0 ad-linucb "$LINEAR_TASKS" "$K_LINEAR" linear; }

room() {
  seqrl collect --env darkroom --quality dpt --set tasks=80 --set "episodes=$ROOM_DPT_EPISODES"
  seqrl collect --env darkroom --quality ad-q --set tasks=80 --set "episodes=$ROOM_AD_EPISODES"
  local env=seqrl/DarkRoom-v0 tok=(--set "policy.tokens=\"$ROOM_TOKENS\"")
  # two at a time (Dark Room's longer contexts make these the slow half)
  { train dpt seqrl/darkroom/dpt-v0 $env "$K_ROOM" room_dpt "${tok[@]}"
    train ad_mamba seqrl/darkroom/ad-q-v0 $env "$K_ROOM" room_ad_mamba "${mamba[@]}" "${tok[@]}"; } &
  { train ad seqrl/darkroom/ad-q-v0 $env "$K_ROOM" room_ad "${tok[@]}"
    train dpt_mamba seqrl/darkroom/dpt-v0 $env "$K_ROOM" room_dpt_mamba "${mamba[@]}" "${tok[@]}"; } &
  wait
  seqrl icrl "$OUT"/room_{dpt,ad,dpt_mamba,ad_mamba}/checkpoint.pt --name dpt-transformer --name ad-transformer \
    --name dpt-mamba --name ad-mamba --tasks "$TEST_TASKS" --seeds 3 --episodes "$ROOM_EPISODES" --mode online \
    --mode online-episode --mode offline --extrapolate --device "$DEVICE" --out "$OUT/eval_room" \
    > "$OUT/eval_room.log" 2>&1
}

room_adeps() {  # AD-epsilon against AD on Q-learning histories, the room part's sizes, tokens, K and evaluation
  local env=seqrl/DarkRoom-v0 tok=(--set "policy.tokens=\"$ROOM_TOKENS\"") t
  for q in ad-noisy ad-q; do
    t=$(date +%s)
    seqrl collect --env darkroom --quality $q --set tasks=80 --set "episodes=$ROOM_AD_EPISODES"
    echo "collect $q: $(( $(date +%s) - t )) s"
  done
  train ad seqrl/darkroom/ad-noisy-v0 $env "$K_ROOM" room_adeps_ad "${tok[@]}"
  train ad_mamba seqrl/darkroom/ad-noisy-v0 $env "$K_ROOM" room_adeps_ad_mamba "${mamba[@]}" "${tok[@]}"
  [ -f "$OUT/room_ad/checkpoint.pt" ] || train ad seqrl/darkroom/ad-q-v0 $env "$K_ROOM" room_ad "${tok[@]}"
  [ -f "$OUT/room_ad_mamba/checkpoint.pt" ] ||
    train ad_mamba seqrl/darkroom/ad-q-v0 $env "$K_ROOM" room_ad_mamba "${mamba[@]}" "${tok[@]}"
  t=$(date +%s)
  seqrl icrl "$OUT"/room_adeps_{ad,ad_mamba}/checkpoint.pt "$OUT"/room_{ad,ad_mamba}/checkpoint.pt \
    --name ad-eps-transformer --name ad-eps-mamba --name ad-q-transformer --name ad-q-mamba \
    --tasks "$TEST_TASKS" --seeds 3 --episodes "$ROOM_EPISODES" --mode online --mode online-episode --mode offline \
    --extrapolate --device "$DEVICE" --out "$OUT/eval_room_adeps" > "$OUT/eval_room_adeps.log" 2>&1
  echo "eval: $(( $(date +%s) - t )) s"
}

ad_protocol() {  # AD's Dark Room (9x9, H=20) and Key-to-Door (9x9, H=50): AD-epsilon and Q-learning histories
  export MINARI_DATASETS_PATH=$OUT/minari_ad   # another recipe for seqrl/darkroom/ad-*-v0 than the 10x10 room's
  local tok=(--set "policy.tokens=\"$ROOM_TOKENS\"") fam env h tasks test kw k p q t modes
  for fam in darkroom keytodoor; do
    if [ $fam = darkroom ]; then
      env=seqrl/DarkRoom-v0 h=20 tasks=64 test=17 p=room9 kw=(--set env_kwargs.size=9 --set env_kwargs.horizon=20
                                                      --set env_kwargs.start=\"centre\")
      modes=(--mode online --mode online-episode)
    else
      env=seqrl/KeyToDoor-v0 h=50 tasks=$KEYDOOR_TASKS test=$TEST_TASKS p=keydoor kw=()
      modes=(--mode online)  # online-episode re-reads the last episode and needs episodes of one length
    fi
    k=$(( AD_CONTEXT_EPISODES * h ))
    for q in ad-noisy ad-q; do
      t=$(date +%s)
      seqrl collect --env $fam --quality $q --set "tasks=$tasks" --set "episodes=$AD_HISTORY_EPISODES" "${kw[@]}"
      echo "collect $p $q: $(( $(date +%s) - t )) s"
      train ad "seqrl/$fam/$q-v0" $env $k "${p}_${q}" "${tok[@]}"
      train ad_mamba "seqrl/$fam/$q-v0" $env $k "${p}_${q}_mamba" "${mamba[@]}" "${tok[@]}"
    done
    t=$(date +%s)
    seqrl icrl "$OUT/${p}"_{ad-noisy,ad-noisy_mamba,ad-q,ad-q_mamba}/checkpoint.pt --name ad-eps-transformer \
      --name ad-eps-mamba --name ad-q-transformer --name ad-q-mamba --tasks "$test" --seeds 3 \
      --episodes "$AD_EVAL_EPISODES" "${modes[@]}" --extrapolate --device "$DEVICE" \
      --out "$OUT/eval_$p" > "$OUT/eval_$p.log" 2>&1
    echo "eval $p: $(( $(date +%s) - t )) s"
  done
}

start=$(date +%s)
echo "start $(date -u +%FT%TZ) on $(nproc --all) cores: $(python -c 'import platform; print(platform.processor() or platform.machine())')"
PARTS=${PARTS:-"bandit room"}        # which pipelines to run (side by side)
for part in $PARTS; do
  $part > "$OUT/$part.out" 2>&1 &
done
status=0
for part in $PARTS; do wait -n || status=$?; done
for part in $PARTS; do cat "$OUT/$part.out"; done
echo "wall $(( $(date +%s) - start )) s, exit $status"
for part in $PARTS; do cat "$OUT/eval_$part/results.md" 2>/dev/null || true; done
exit $status
