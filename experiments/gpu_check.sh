#!/usr/bin/env bash
# The GPU check (RESULTS.md, "Speed"): on a CUDA machine, in about 8 minutes, one table of what works
# and how fast. The test suite on CUDA (every failure named), each script once under torchrun at tiny
# size with bf16 (the AE with its GAN phase, the DiT with both objectives, a U-ViT, a DC-AE 1.0,
# sample.py --npz, evaluate.py recon and fid with random Inception weights), then bench.py at paper
# scale: eager, with --compile and with --grad-checkpointing (items/s, TFLOP/s, peak GPU memory), and the
# peak memory of decoding 2048 px from an f64 latent, whole and tiled.
#   bash experiments/gpu_check.sh             # in runs/gpu_check/, prints the table at the end
#   DRY_RUN=1 bash experiments/gpu_check.sh   # print the commands
source "$(dirname "$0")/lib.sh"
unset OMP_NUM_THREADS  # one process at a time here: every core may help
R=$RUNS/gpu_check
TABLE=$R/table.txt
[ "${DRY_RUN:-0}" = 1 ] || { rm -rf "$R"; mkdir -p "$R"; }
T1=(torchrun --standalone --nproc_per_node=1)
TINY_AE=(--model dc-ae-tiny --image-size 32 --batch-size 8 --perceptual off --log-every 10)
TINY_DIT=(--model DiT-tiny --max-images 256 --batch-size 16 --max-steps 20 --log-every 10 --sample-steps 4
          --cache-dir $R/cache)

check() {  # check NAME SECONDS CMD...: run with a time limit, note ok / FAILED and the time
  local name=$1 limit=$2; shift 2
  if [ "${DRY_RUN:-0}" = 1 ]; then quote_line "$@"; return 0; fi
  local t0=$SECONDS status=ok
  timeout "$limit" "$@" > "$R/$name.log" 2>&1 || status="FAILED (exit $?, see $R/$name.log)"
  printf '%-28s | %5d s | %s\n' "$name" $((SECONDS - t0)) "$status" | tee -a "$TABLE"
}

check suite 240 python -m pytest -q -rf -p no:cacheprovider
[ "${DRY_RUN:-0}" = 1 ] || grep -E '^(FAILED|ERROR) ' "$R/suite.log" | sed 's/^/    /' | tee -a "$TABLE" || true
check train_ae_gan 120 "${T1[@]}" train_ae.py "${TINY_AE[@]}" --max-steps 20 --gan-weight 0.1 --gan-start 10 \
    --out $R/ae
check train_dit_flow 120 "${T1[@]}" train_dit.py --ae-ckpt $R/ae/last.pt "${TINY_DIT[@]}" --out $R/dit-flow
check train_dit_ddpm 120 "${T1[@]}" train_dit.py --ae-ckpt $R/ae/last.pt "${TINY_DIT[@]}" --objective ddpm \
    --out $R/dit-ddpm
check train_uvit_flow 120 "${T1[@]}" train_dit.py --ae-ckpt $R/ae/last.pt "${TINY_DIT[@]}" --model UViT-tiny \
    --out $R/uvit-flow
check train_ae_10 120 "${T1[@]}" train_ae.py "${TINY_AE[@]}" --model dc-ae-tiny-1.0 --max-steps 20 --out $R/ae-10
check sample_npz 120 "${T1[@]}" sample.py --ckpt $R/dit-flow/last.pt --num-samples 64 --steps 4 --npz $R/samples.npz
check evaluate_recon 120 "${T1[@]}" evaluate.py recon --ae-ckpt $R/ae/last.pt --image-size 32 --num-images 64 \
    --lpips off --fid off
[ "${DRY_RUN:-0}" = 1 ] || python -c "import torch, fid; torch.manual_seed(0); \
torch.save(fid.FIDInception().net.state_dict(), '$R/inception-random.pth')"
check evaluate_fid 120 "${T1[@]}" evaluate.py fid --samples $R/samples.npz --ref-data shapes --image-size 32 \
    --num-images 256 --inception-weights $R/inception-random.pth
PAPER=(--ae dc-ae-f32c128-1.5 --dit DiT-XL --image-size 256 --batch-size 32 --iters 5 --warmup 2)
check bench_eager 300 python bench.py "${PAPER[@]}"
check bench_compile 300 python bench.py "${PAPER[@]}" --compile --no-fid
check bench_checkpointing 300 python bench.py "${PAPER[@]}" --grad-checkpointing --no-fid
check bench_f64c128_512px 300 python bench.py --ae dc-ae-f64c128-1.5 --dit DiT-XL --image-size 512 \
    --batch-size 32 --iters 3 --warmup 1 --grad-checkpointing --no-fid
for tile in 0 1024; do  # decoding a 2048 px image from an f64 latent, whole and in 1024 px tiles
  check decode_2048px_tile$tile 120 python bench.py --coding-memory decode --ae dc-ae-f64c128-1.5 \
      --image-size 2048 --batch-size 1 --tile-size $tile
done
if [ "${DRY_RUN:-0}" != 1 ]; then
  grep -h '^decode' "$R"/decode_2048px_tile*.log >> "$TABLE" || true
  for name in bench_eager bench_compile bench_checkpointing bench_f64c128_512px; do
    echo "== $name" >> "$TABLE"
    grep -E '^(dc-ae|piece|AE|DiT|sampling|FID)' "$R/$name.log" >> "$TABLE" || true
  done
  python -c "import torch; print('card:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
      >> "$TABLE" 2>&1 || true
  echo; cat "$TABLE"
fi
