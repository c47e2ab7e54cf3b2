#!/usr/bin/env bash
# RESULTS.md, "Speed" (what --compile gives on this machine): the classroom AE training step and the DiT
# training step, eager and compiled with inductor, beside diffusers' AutoencoderDC on the same weights and
# inputs, eager and compiled; side by side in one process, the median of 15 steps after 3 warm-up steps
# each, and the compile time (the first call). Needs the optional diffusers (pip install diffusers).
#   bash experiments/compile_speed.sh      # about 15 min on 2 cores (mostly compiling)
#   DRY_RUN=1 bash experiments/compile_speed.sh   # print the commands
source "$(dirname "$0")/lib.sh"
export OMP_NUM_THREADS=${COMPILE_THREADS:-2}  # a laptop's use of both cores
# bench.py's pieces eager and compiled (its own table), then the side-by-side steps below
always python bench.py --no-fid --iters 15 --warmup 3
always python bench.py --no-fid --iters 15 --warmup 3 --compile
[ "${DRY_RUN:-0}" = 1 ] && exit 0
"$PYTHON" - <<'PY'
import statistics, time
import torch
import dcae15
from dcaelib import files, models

torch.manual_seed(0)
B = 16
x = torch.rand(B, 3, 64, 64) * 2 - 1


def timing(step, n=15, warmup=3):
    t0 = time.perf_counter()
    step()  # the first call compiles, for a compiled step
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def ae_step(ae, opt, decode_first_c):
    def step():
        rec = decode_first_c(ae, x)
        loss = (rec - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def ours(ae, x):  # train_ae.py's compiled path: c' a (B,) tensor that masks the full latent
    return ae(x, torch.full((B,), 32))[0]


rows = []
cfg = models.autoencoder_config("dc-ae-f16c64-classroom")
ae = dcae15.DCAE(cfg)  # the eager training path: an int c', the latent sliced
rows.append(("AE step, ours, eager, int c'", *timing(ae_step(ae, torch.optim.AdamW(ae.parameters(), 2e-4),
                                                              lambda ae, x: ae(x, 32)[0]))))
for compiled in (False, True):
    ae = dcae15.DCAE(cfg)
    if compiled:
        ae.compile()
    rows.append((f"AE step, ours, {'inductor' if compiled else 'eager'}, tensor c'",
                 *timing(ae_step(ae, torch.optim.AdamW(ae.parameters(), 2e-4), ours))))
try:
    import diffusers
except ImportError:
    print("note: diffusers is not installed (pip install diffusers): its rows are left out")
else:
    import json, os, tempfile
    folder = tempfile.mkdtemp()
    files.save_diffusers(folder, cfg, dcae15.DCAE(cfg).state_dict(), 0.3)

    def theirs(hf, x):  # encode, zero the channels >= c', decode: the same reconstruction
        z = hf.encode(x).latent
        return hf.decode(z * dcae15.channel_mask(64, 32)).sample

    for compiled in (False, True):
        hf = diffusers.AutoencoderDC.from_pretrained(folder)
        if compiled:  # its encode and decode (what a training step calls), not forward
            hf.encode, hf.decode = torch.compile(hf.encode), torch.compile(hf.decode)
        rows.append((f"AE step, diffusers {diffusers.__version__}, {'inductor' if compiled else 'eager'}",
                     *timing(ae_step(hf, torch.optim.AdamW(hf.parameters(), 2e-4), theirs))))
dit_cfg = models.build_backbone_config("DiT-classroom", input_size=4, in_channels=64, num_classes=10)
z, y = torch.randn(32, 64, 4, 4), torch.arange(32) % 10
for compiled in (False, True):
    torch.manual_seed(0)
    dit = dcae15.DiT(dit_cfg)
    if compiled:
        dit.compile()
    opt, flow = torch.optim.AdamW(dit.parameters(), 1e-3), dcae15.FlowMatching()
    g = torch.Generator().manual_seed(0)

    def step():
        loss, _ = flow.training_loss(dit, z, y, c_prime=int(torch.randint(1, 8, (1,), generator=g)) * 8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rows.append((f"DiT step (augmented), {'inductor' if compiled else 'eager'}", *timing(step)))
print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
print("| step | median (15 steps) | first call (compiles) |\n|---|---|---|")
for name, median, first in rows:
    print(f"| {name} | {median * 1000:.0f} ms | {first:.1f} s |")
PY
