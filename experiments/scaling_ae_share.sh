#!/usr/bin/env bash
# RESULTS.md, "Scaling with model size", why DC-AE 1.5's speed-up shrinks: the structured AE's share
# or augmented training's? A third arm at one size of experiments/scaling.sh: the structured AE with
# the plain objective (--no-augmented), the same 4400 steps, seed 0, judged as the other two arms. Their
# curves are the committed assets/scaling/NET-SIZE.csv, merged with this arm's into one table with the
# speed-ups of both DC-AE 1.5 arms over DC-AE. The judge and the AEs are trained again (seeded, but not
# bit-identical across machines and thread counts): compare the FD of the real images that `curve`
# prints with the committed judge's 2.90 to see how far the distances compare.
#   bash experiments/scaling_ae_share.sh              # DiT-classroom-L, in runs/ (about 1 h on 2 cores)
#   NET=UViT SIZE=L bash experiments/scaling_ae_share.sh
#   DRY_RUN=1 bash experiments/scaling_ae_share.sh    # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
S=$R/scaling
NET=${NET:-DiT}
SIZE=${SIZE:-L}
model=$NET-classroom; [ "$SIZE" = M ] || model=$NET-classroom-$SIZE
committed=assets/scaling/$NET-$SIZE.csv
[ -f $committed ] || { echo "no $committed: run NETS=$NET SIZES=$SIZE bash experiments/scaling.sh" >&2; exit 1; }
out=$S/$NET-$SIZE-sae-plain-s0
autoencoders $R
train $out python train_dit.py --ae-ckpt $R/ae/last.pt --no-augmented --model $model --max-steps 4400 \
    --save-every 1100 --seed 0 --cache-dir $R/latent_cache --out $out
always python evaluate.py curve --run "structured AE + plain DiT=$out" --judge-cache $R/judges \
    --csv $S/$NET-$SIZE-sae-plain.csv --plot $S/$NET-$SIZE-sae-plain.png
# the committed arms and this one in one CSV (the same columns) -> the speed-ups against DC-AE
[ "${DRY_RUN:-0}" = 1 ] || { cat $committed; tail -n +2 $S/$NET-$SIZE-sae-plain.csv; } > $S/$NET-$SIZE-3arms.csv
always python evaluate.py curve --from-csv $S/$NET-$SIZE-3arms.csv --baseline DC-AE \
    --plot $S/$NET-$SIZE-3arms.png --json $S/$NET-$SIZE-3arms.json
