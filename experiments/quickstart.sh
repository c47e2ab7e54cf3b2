#!/usr/bin/env bash
# The README's quick start, as the table "What to expect" was measured: two structured / plain
# autoencoders, the augmented and the plain DiT, samples, the partial-channel table, the class judge.
#   bash experiments/quickstart.sh               # everything, in runs/ (about 100 minutes on 2 cores)
#   SMOKE=1 bash experiments/quickstart.sh       # a few steps of each command, in runs/smoke (tests)
#   DRY_RUN=1 bash experiments/quickstart.sh     # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS; AE=(); DIT=(); SMP=(); CLS=(); REC=()
KEEP=(--save-every 2200)  # the step-2200 checkpoints that the exercises 7, 8, 11 and 12 read
if [ "${SMOKE:-0}" = 1 ]; then  # tiny settings: every command runs in seconds
  R=$RUNS/smoke
  AE=(--model dc-ae-tiny --max-steps 4 --batch-size 8 --log-every 2 --perceptual off)
  KEEP=()
  DIT=(--model DiT-tiny --max-steps 4 --batch-size 8 --log-every 2 --max-images 64 --sample-steps 2 --cache-dir $R/cache)
  SMP=(--num-samples 10 --steps 2)
  CLS=(--num-samples 10 --steps 2 --num-images 200 --judge-steps 5 --num-val 20 --judge-cache $R/judges)
  REC=(--num-images 16)
fi
# two commands at a time (one thread each): the two autoencoders, the two DiTs, recon and the first
# classes (it trains the judge), then the rest
autoencoders $R "${AE[@]}"
train $R/dit python train_dit.py --ae-ckpt $R/ae/last.pt "${DIT[@]}" "${KEEP[@]}" --out $R/dit &
train $R/dit-plain python train_dit.py --ae-ckpt $R/ae/last.pt "${DIT[@]}" "${KEEP[@]}" --no-augmented \
    --out $R/dit-plain &
wait_all
produce $R/recon.json python evaluate.py recon --ae-ckpt $R/ae/last.pt --baseline-ckpt $R/ae-plain/last.pt \
    "${REC[@]}" --json $R/recon.json &
produce $R/classes-dit.json python evaluate.py classes --ckpt $R/dit/last.pt "${CLS[@]}" --json $R/classes-dit.json &
wait_all
produce $R/dit/sample_seed0.png python sample.py --ckpt $R/dit/last.pt "${SMP[@]}"
if [ "${SMOKE:-0}" != 1 ]; then  # the smoke run makes do with one of each kind of command
  produce $R/dit-plain/sample_seed0.png python sample.py --ckpt $R/dit-plain/last.pt &
  # after the first classes, whose judge is cached
  produce $R/classes-dit-plain.json python evaluate.py classes --ckpt $R/dit-plain/last.pt \
      --json $R/classes-dit-plain.json &
  wait_all
fi
# the table "What to expect" of README.md, from the logs and JSON files above -> $R/quickstart.md
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$R" "$RUNS/experiments.log" <<'PY'
import json, os, re, sys
R, times_log = sys.argv[1], sys.argv[2]
times = {}
for line in open(times_log):  # "<date> <seconds> s: <command>", the last run of each command
    m = re.match(r"\S+ (\d+) s: (.*)", line)
    if m and m.group(2).split()[1].endswith(".py"):
        times[m.group(2)] = int(m.group(1))
def took(*words):
    hits = [s for c, s in times.items() if all(w in c.split() for w in words)]
    return f"{hits[-1]} s" if hits else "-"
def final(run):  # the JSON line train_ae.py writes last, or the last step line of train_dit.py
    lines = open(os.path.join(R, run, "log.txt")).read().splitlines()
    return lines
def psnr(run):
    last = [json.loads(l) for l in final(run) if l.startswith("{")][-1]
    p = last["final_psnr"]
    return f"{p[min(p, key=int)]:.2f} dB from the first {min(p, key=int)} channels, {p[max(p, key=int)]:.2f} dB from all {max(p, key=int)}; latent scale {last['latent_scale']:.3f}"
def dit(run):
    step = [l for l in final(run) if l.startswith("step ")][-1]
    terms = dict(re.findall(r"(loss\w*) ([\d.]+)", step))
    rate = re.search(r"([\d.]+) latents/s", step).group(1)
    masked = f" / {float(terms['loss_masked']):.3f} (first c')" if "loss_masked" in terms else ""
    return f"final interval loss {float(terms.get('loss_full', terms['loss'])):.3f} (all channels){masked}; {float(rate):.0f} latents/s"
def judged(name):
    if not os.path.isfile(os.path.join(R, name)):  # not made by a smoke run
        return "-"
    r = json.load(open(os.path.join(R, name)))
    s = r["samples"]
    return (f"{s['1.0']['share']:.1%} / {s['4.0']['share']:.1%} in the requested class at guidance 1 / 4, "
            f"judge FD {s['1.0']['fd']:.2f} / {s['4.0']['fd']:.2f}")
rec = json.load(open(os.path.join(R, "recon.json")))["results"]
cs = sorted(rec["model"], key=int)
rows = [("`train_ae.py`", took("train_ae.py", "--out", f"{R}/ae"), psnr("ae")),
        ("`train_ae.py --no-structured`", took("train_ae.py", "--no-structured"), psnr("ae-plain")),
        ("`train_dit.py --ae-ckpt runs/ae/last.pt`", took("train_dit.py", f"{R}/dit"), dit("dit")),
        ("`train_dit.py ... --no-augmented`", took("train_dit.py", "--no-augmented"), dit("dit-plain")),
        ("`sample.py --ckpt runs/dit/last.pt`", took("sample.py", f"{R}/dit/last.pt"),
         "40 samples, 50 Heun steps, guidance 4"),
        ("`evaluate.py recon ...`", took("evaluate.py", "recon"),
         "PSNR from the first c' channels, structured / plain: " + ", ".join(
             f"{c}: {rec['model'][c]['psnr']:.2f} / {rec['baseline'][c]['psnr']:.2f}" for c in (cs[0], cs[len(cs) // 2 - 1], cs[-1]))
         + " dB"),
        ("`evaluate.py classes --ckpt runs/dit/last.pt`", took("classes", f"{R}/dit/last.pt"), judged("classes-dit.json")),
        ("`evaluate.py classes --ckpt runs/dit-plain/last.pt`", took("classes", f"{R}/dit-plain/last.pt"),
         judged("classes-dit-plain.json"))]
with open(os.path.join(R, "quickstart.md"), "w") as fh:
    fh.write("| command | time | result |\n|---|---|---|\n")
    fh.writelines(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    if os.path.isfile(os.path.join(R, "classes-dit.json")):  # the judge's ceiling, once
        r = json.load(open(os.path.join(R, "classes-dit.json")))
        fh.write(f"\nThe judge's ceiling: {r['ceiling']:.1%} of originals, {r['ceiling_recon']:.1%} of this AE's "
                 f"reconstructions.\n")
print(open(os.path.join(R, "quickstart.md")).read())
PY
