#!/usr/bin/env bash
# RESULTS.md, "Convergence" (flow matching): 8800 DiT steps with a checkpoint every 1100 in three arms,
# DC-AE (plain AE + plain DiT), DC-AE 1.5 (structured AE + augmented DiT) and the structured AE with a plain
# DiT, one run per arm and seed; then the class judge on every checkpoint at guidance 1, added to
# assets/convergence.csv (evaluate.py curve --add-to: a run whose AE, judge or judging differs from the
# rows already there is refused, so a comparison can grow over sessions that each train the AEs again).
#   bash experiments/convergence.sh                        # seeds 0 1 2, every arm (about 10 h on 2 cores)
#   SEEDS=1 ARMS="base 15" bash experiments/convergence.sh # one seed pair (about 2 h with the AEs)
#   CURVE=0 bash experiments/convergence.sh                # train only, judge later
#   DRY_RUN=1 bash experiments/convergence.sh              # print the commands
# The AEs and the judge train bit for bit alike at one thread (lib.sh sets OMP_NUM_THREADS=1); run this
# from a git worktree of one commit, so that no edit reaches a run midway.
source "$(dirname "$0")/lib.sh"
R=$RUNS
CSV=${CSV:-assets/convergence.csv}
CACHE=(--cache-dir $R/latent_cache)
LONG=(--max-steps 8800 --save-every 1100)
# the judging protocol (RESULTS.md, "Judging protocol"): guidance 1, JUDGE_SAMPLES samples a point
JUDGE=(--cfg-scales 1 --num-samples ${JUDGE_SAMPLES:-1000} --judge-cache $R/judges)
autoencoders $R
declare -A AE=([base]=$R/ae-plain [15]=$R/ae [sae-plain]=$R/ae)
declare -A FLAGS=([base]=--no-augmented [15]= [sae-plain]=--no-augmented)
declare -A LABEL=([base]="DC-AE" [15]="DC-AE 1.5" [sae-plain]="structured AE + plain DiT")
for s in ${SEEDS:-0 1 2}; do  # two commands at a time (one thread each)
  for arm in ${ARMS:-base 15 sae-plain}; do
    train $R/dit-$arm-s$s python train_dit.py --ae-ckpt ${AE[$arm]}/last.pt ${FLAGS[$arm]} "${LONG[@]}" \
        --seed $s "${CACHE[@]}" --out $R/dit-$arm-s$s &
    two_at_a_time
  done
done
wait_all
[ "${CURVE:-1}" = 1 ] || exit 0  # CURVE=0: train only (e.g. to choose the judging protocol first)
# the runs of this call, added to the committed comparison (every point is kept in RUN/curve/)
RUN_FLAGS=()
for arm in ${ARMS:-base 15 sae-plain}; do
  dirs=$(for s in ${SEEDS:-0 1 2}; do printf "%s," $R/dit-$arm-s$s; done)
  RUN_FLAGS+=(--run "${LABEL[$arm]}=${dirs%,}")
done
ADD=(); if [ -f "$CSV" ] && head -1 "$CSV" | grep -q ae_sha256; then ADD=(--add-to "$CSV"); fi
always python evaluate.py curve "${RUN_FLAGS[@]}" --baseline DC-AE "${JUDGE[@]}" "${ADD[@]}" \
    --csv "$CSV" --plot $R/convergence.png --json $R/convergence.json
