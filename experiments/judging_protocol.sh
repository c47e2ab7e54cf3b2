#!/usr/bin/env bash
# RESULTS.md, "Judging protocol": how much the judge FD of one checkpoint moves with the sampling seed, at
# 200, 500 and 1000 samples (guidance 1), to choose the samples per point of the curves so that the
# point noise stays well below the spread between DiT seeds.
#   CKPT=runs/dit-base-s0/last.pt bash experiments/judging_protocol.sh   # about 20 min on one core
#   SAMPLES="1000 2000" CKPT=... bash experiments/judging_protocol.sh  # other sample counts
#   DRY_RUN=1 CKPT=... bash experiments/judging_protocol.sh              # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
CKPT=${CKPT:-$R/dit-base-s0/last.pt}
OUT=$R/judging_protocol
[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$OUT"
for n in ${SAMPLES:-200 500 1000}; do
  for seed in 0 1 2; do
    produce $OUT/n$n-s$seed.json python evaluate.py classes --ckpt "$CKPT" --cfg-scales 1 --num-samples $n \
        --seed $seed --judge-cache $R/judges --json $OUT/n$n-s$seed.json
  done
done
# the table: mean and spread of the judge FD and the in-class share at each sample count
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
lines = ["| samples | judge FD, g1 (seeds 0 / 1 / 2) | mean | sd | in class, g1 (mean) |", "|---|---|---|---|---|"]
for n in sorted(int(f.split('-')[0][1:]) for f in os.listdir(out) if f.endswith('-s2.json')):
    runs = [json.load(open(os.path.join(out, f"n{n}-s{s}.json")))["samples"]["1.0"] for s in (0, 1, 2)]
    fd = [r["fd"] for r in runs]
    lines.append(f"| {n} | {' / '.join(f'{v:.2f}' for v in fd)} | {statistics.mean(fd):.2f} | "
                 f"{statistics.stdev(fd):.2f} | {statistics.mean(r['share'] for r in runs):.3f} |")
open(os.path.join(out, "table.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
