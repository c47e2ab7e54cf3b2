#!/usr/bin/env bash
# RESULTS.md, "Scaling with model size", the U-ViT's own recipe, chosen on the baseline arm only (DC-AE: the
# plain AE and the plain objective) so that the choice cannot favour DC-AE 1.5: U-ViT M (UViT-classroom),
# 4400 steps, seed 0, eight settings: AdamW betas 0.9,0.999 (DiT's) or 0.99,0.99 (the official U-ViT / USiT
# recipe) x learning rate 1e-3 (the classroom DiT's) or 3e-4 x gradient clipping at norm 1 or none (official:
# none). NOTE: the official 5000-step warmup and EMA 0.9999 (a 10,000-step horizon) do not fit 4400 steps;
# warmup and EMA stay the classroom's (100 steps, 0.995). Judged as RESULTS.md's "Judging protocol" says,
# every checkpoint (1100 steps apart) -> assets/uvit_recipe.csv; scaling.sh then takes the winner as
# UVIT_FLAGS for both arms at every size.
#   bash experiments/uvit_recipe.sh              # about 1 h 30 min on 2 cores (45 min training, 40 judging)
#   DRY_RUN=1 bash experiments/uvit_recipe.sh    # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
S=$R/uvit_recipe
autoencoders $R
RUNS_FLAGS=()
for betas in 0.9,0.999 0.99,0.99; do
  for lr in 1e-3 3e-4; do
    for clip in 1 0; do  # two commands at a time (one thread each)
      out=$S/betas${betas/,/-}-lr$lr-clip$clip
      train $out python train_dit.py --ae-ckpt $R/ae-plain/last.pt --no-augmented --model UViT-classroom \
          --max-steps 4400 --save-every 1100 --adam-betas $betas --lr $lr --grad-clip $clip --seed 0 \
          --cache-dir $R/latent_cache --out $out &
      RUNS_FLAGS+=(--run "betas $betas lr $lr clip $clip=$out")
      two_at_a_time
    done
  done
done
wait_all
always python evaluate.py curve "${RUNS_FLAGS[@]}" --cfg-scales 1 --num-samples ${JUDGE_SAMPLES:-1000} \
    --judge-cache $R/judges --csv assets/uvit_recipe.csv --plot assets/uvit_recipe.png --json $S/uvit_recipe.json
