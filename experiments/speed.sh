#!/usr/bin/env bash
# RESULTS.md, "Speed": bench.py's table of the classroom presets on this machine (every core); on a GPU
# also the paper-scale table and the latent cache encoded from JPEGs with 0 and 4 data-loader workers.
#   bash experiments/speed.sh                 # tables in runs/speed/ (CPU: about a minute)
#   GPU=0 bash experiments/speed.sh           # the classroom table only (default: 1 when CUDA is there)
#   IMAGES=DIR AE_CKPT=FILE bash experiments/speed.sh   # the JPEG encoding: DIR holds one sub-folder of
#                                             # JPEGs a class; FILE is a train_ae.py dc-ae-f32c128-1.5 file
#   DRY_RUN=1 bash experiments/speed.sh       # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS/speed
IMAGES=${IMAGES:-}; AE_CKPT=${AE_CKPT:-$RUNS/ae-in256/last.pt}
GPU=${GPU:-auto}
if [ "$GPU" = auto ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then GPU=1  # print every command
  else GPU=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))'); fi
fi

bench() {  # bench FILE ARGS...: python bench.py ARGS on every core (nproc obeys OMP_NUM_THREADS, so
           # unset it), its table also kept in FILE
  local file=$1; shift
  local cmd=(env OMP_NUM_THREADS=$(env -u OMP_NUM_THREADS nproc) "$PYTHON" bench.py "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then always "${cmd[@]}"; return 0; fi
  mkdir -p "$R"
  always "${cmd[@]}" | tee "$file"
}

bench $R/bench.txt
if [ "$GPU" = 1 ]; then
  bench $R/bench-paper.txt --ae dc-ae-f32c128-1.5 --dit DiT-XL --image-size 256 --batch-size 32
  if [ -n "$IMAGES" ] || [ "${DRY_RUN:-0}" = 1 ]; then
    for w in 0 4; do  # train_dit.py prints "latent cache: encoded N images in T s"
      train $R/encode-w$w python train_dit.py --ae-ckpt $AE_CKPT --data imagefolder --data-path ${IMAGES:-DIR} \
          --image-size 256 --max-images 0 --encode-batch-size 64 --num-workers $w --max-steps 1 \
          --cache-dir $R/cache-w$w --out $R/encode-w$w
    done
  else
    echo "JPEG encoding skipped: set IMAGES (a folder of JPEGs) and AE_CKPT" >&2
  fi
fi
