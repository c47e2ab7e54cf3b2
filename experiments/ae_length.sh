#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length": the plain AE, the structured AE (one c' a step)
# and the structured AE with the full latent in every step, each trained 8800 steps (4x the default) with
# a step file every 2200; their reconstructions from c/8, c/2 and c channels at 1x, 2x and 4x the default
# length. The learning rate is constant after warmup and a step file is what a run that ended there writes
# (tests/test_train_ae.py), so step 2200 of a run is the 2200-step run.
#   bash experiments/ae_length.sh             # in runs/ (about 4 h on 2 cores)
#   ARMS=max bash experiments/ae_length.sh    # some of the three arms (plain structured max) only
#   DRY_RUN=1 bash experiments/ae_length.sh   # print the commands
# runs/ does not outlive a checkout: the summary keeps the rows of assets/ae_length.csv (the committed
# measurements) for every (arm, step) it has no JSON file of, and recomputes the gaps.
source "$(dirname "$0")/lib.sh"
R=$RUNS/ae-length
ARMS=${ARMS:-plain structured max}
arm() { [[ " $ARMS " == *" $1 "* ]]; }
for a in $ARMS; do
  case $a in plain|structured|max) ;; *) echo "ARMS: no arm '$a' (the arms are plain, structured and max)" >&2; exit 2 ;; esac
done
# two commands at a time (one thread each)
if arm plain; then ae_length_run $R plain & fi
if arm structured; then ae_length_run $R structured & fi
wait_all
if arm max; then ae_length_run $R max; fi
# PSNR / SSIM from the first 8, 32 and 64 channels, 1000 validation images, at each length
for run in $ARMS; do
  for step in 2200 4400 8800; do
    produce $R/recon-$run-$step.json python evaluate.py recon --ae-ckpt $R/$run/step_$(printf %07d $step).pt \
        --c-primes 8,32,64 --json $R/recon-$run-$step.json
  done
done
# the table and the picture, from the JSON files above -> $R/ae_length.md, $R/ae_length.csv, $R/ae_length.png
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$R" <<'PY'
import csv, json, os, sys
from dcaelib import pictures
R = sys.argv[1]
names = {"plain": "plain (--no-structured)", "structured": "structured (default)",
         "max": "structured, 2 c' a step with the full latent"}
rows = []
for run in names:
    for step in (2200, 4400, 8800):
        path = os.path.join(R, f"recon-{run}-{step}.json")
        if os.path.isfile(path):
            res = json.load(open(path))["results"]["model"]
            rows.append({"run": run, "step": step, **{f"{m}_{c}": res[c][m] for c in ("8", "32", "64")
                                                       for m in ("psnr", "ssim")}})
measured = {(r["run"], r["step"]) for r in rows}
if os.path.isfile("assets/ae_length.csv"):  # an earlier checkout's measurements, where none is newer
    for r in csv.DictReader(open("assets/ae_length.csv")):
        if (r["run"], int(r["step"])) not in measured:
            rows.append({k: (r["run"] if k == "run" else int(r["step"]) if k == "step" else float(v))
                         for k, v in r.items() if k != "gap_64"})
            print(f"kept from assets/ae_length.csv: {r['run']} at step {r['step']}")
rows.sort(key=lambda r: (list(names).index(r["run"]), r["step"]))
plain = {r["step"]: r["psnr_64"] for r in rows if r["run"] == "plain"}
for r in rows:
    r["gap_64"] = r["psnr_64"] - plain[r["step"]] if r["step"] in plain else None
with open(os.path.join(R, "ae_length.csv"), "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
lines = ["| AE | steps | first 8 (c/8) | first 32 (c/2) | all 64 (c) | gap to the plain AE at c |",
         "|---|---|---|---|---|---|"]
for r in rows:
    cells = [f"{r[f'psnr_{c}']:.2f} / {r[f'ssim_{c}']:.3f}" for c in ("8", "32", "64")]
    gap = "-" if r["run"] == "plain" or r["gap_64"] is None else f"{r['gap_64']:+.2f} dB"
    lines.append(f"| {names[r['run']]} | {r['step']} | " + " | ".join(cells) + f" | {gap} |")
open(os.path.join(R, "ae_length.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
plt = pictures.pyplot()
if plt is None:
    sys.exit("note: no picture: matplotlib is not installed (pip install matplotlib); the table and CSV are complete")
fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
for run, colour in zip(names, ("tab:gray", "tab:red", "tab:blue")):
    p = [r for r in rows if r["run"] == run]
    if not p:
        continue
    for ax, c in zip(axes, ("8", "32", "64")):
        ax.plot([r["step"] for r in p], [r[f"psnr_{c}"] for r in p], marker="o", color=colour, label=names[run])
    if run != "plain":
        q = [r for r in p if r["gap_64"] is not None]
        axes[3].plot([r["step"] for r in q], [r["gap_64"] for r in q], marker="o", color=colour, label=names[run])
for ax, title in zip(axes, ("PSNR from the first 8 channels (c/8)", "first 32 (c/2)", "all 64 (c)",
                            "gap to the plain AE at c (dB)")):
    ax.set_title(title, fontsize=10); ax.set_xlabel("training steps"); ax.set_xscale("log", base=2)
    ax.set_xticks([2200, 4400, 8800], ["2200", "4400", "8800"]); ax.grid(alpha=0.3)
axes[3].axhline(0, color="black", linewidth=0.8)
axes[0].set_ylabel("dB"); axes[2].legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(os.path.join(R, "ae_length.png"), dpi=110)
print(f"wrote {os.path.join(R, 'ae_length.png')}")
PY
