"""
How fast each piece runs on this machine: the AE training step, encode and decode, the DiT training
step (plain and augmented), sampling, and the FID feature extractor.

    python bench.py                                           # the classroom presets (CPU, or a GPU)
    python bench.py --ae dc-ae-f32c128-1.5 --dit DiT-XL --image-size 512 --batch-size 32   # paper scale

Random weights and random inputs: speed does not depend on what the weights are, so nothing is
downloaded. On CUDA, bf16 autocast (as the training scripts), timings between synchronisations, and
the achieved TFLOP/s from the FLOPs torch.utils.flop_counter counts in one iteration (matrix products
and convolutions; forward and backward for the training steps, the optimiser not counted).
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import dcae15
from dcaelib import cli, distributed, fid, files, models, pictures, tiling


def timed(fn, iters, warmup, device):
    """Seconds per call of fn, averaged over `iters` calls after `warmup` untimed ones."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def counted_flops(fn):
    """FLOPs of one call of fn (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def saved_activation_bytes(step, units):
    """Bytes that one call of `step` (a forward) saves for backward, without and with activation
    checkpointing of `units` (the blocks that set_grad_checkpointing recomputes).

    Without: every tensor autograd keeps (the weights themselves are not counted). With: what is kept
    outside the units, plus each unit's inputs, plus the largest unit's own activations, which are
    rebuilt for its backward. Run it on the meta device: shapes, no memory, seconds at any scale.
    """
    saved, spans = {}, []

    def pack(t):
        base = t if t._base is None else t._base
        if not isinstance(base, torch.nn.Parameter):
            saved[id(t)] = t.numel() * t.element_size()  # autograd keeps t alive: ids stay unique
        return t

    def before(unit, inputs):
        unit.bench_mark = (sum(saved.values()),
                           sum(i.numel() * i.element_size() for i in inputs if torch.is_tensor(i)))

    def after(unit, inputs, output):
        start, input_bytes = unit.bench_mark
        spans.append((sum(saved.values()) - start, input_bytes))

    hooks = [u.register_forward_pre_hook(before) for u in units]
    hooks += [u.register_forward_hook(after) for u in units]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
    finally:
        for h in hooks:
            h.remove()
    total = sum(saved.values())
    inside, inputs = sum(s for s, _ in spans), sum(i for _, i in spans)
    return total, total - inside + inputs + max(s for s, _ in spans)


def activation_memory():
    """Per image, the training step's saved activations (fp32) at paper scale, with and without
    checkpointing, and the largest batch that then fits a card of 80 GB."""
    card, rows = 80e9, []
    with torch.device("meta"):
        for name, size in (("dc-ae-f32c128-1.5", 256), ("dc-ae-f64c128-1.5", 512)):
            ae = models.build_autoencoder(models.autoencoder_config(name))
            x = torch.rand(1, 3, size, size)
            units = [op for stage in [*ae.encoder.stages, *ae.decoder.stages] for op in stage.op_list]
            c_half = ae.latent_channels // 2
            rows.append((f"{name} at {size} px, c' = c/2", ae,
                         lambda ae=ae, x=x, c=c_half: ae(x, c), units))
        dit = dcae15.DiT(dcae15.build_dit_config("DiT-XL", input_size=8, in_channels=128,
                                                 num_classes=1000))
        z, y = torch.randn(1, 128, 8, 8), torch.zeros(1, dtype=torch.long)
        flow = dcae15.FlowMatching()
        rows.append(("DiT-XL on f32c128 latents of 256 px, augmented", dit,
                     lambda: flow.training_loss(dit, z, y, c_prime=16), list(dit.blocks)))
        print(f"{'training step':<50} | {'params':>8} | {'act. / image':>12} | {'checkpointed':>12} | "
              f"{'batch in 80 GB':>14}")
        print("-" * 108)
        results = {}
        for label, model, step, units in rows:
            plain, checkpointed = saved_activation_bytes(step, units)
            params = sum(p.numel() for p in model.parameters())
            # fp32 weights, gradients, AdamW's two moments and the EMA copy: 20 bytes a parameter
            free = card - 20 * params
            fits = (int(free // plain), int(free // checkpointed))
            results[label] = {"params": params, "plain": plain, "checkpointed": checkpointed,
                              "batch": fits}
            print(f"{label:<50} | {params / 1e6:>7.1f}M | {plain / 2**30:>10.3f} GiB | "
                  f"{checkpointed / 2**30:>8.3f} GiB | {fits[0]:>5} / {fits[1]:>6}")
    return results


def coding_memory(args, device):
    """Peak memory of one encode or decode (--coding-memory) of a batch at --image-size, whole or
    in --tile-size tiles, above what the model and its input already hold: CUDA's allocator peak,
    or on the CPU the process's peak resident memory, reset first where Linux allows it. One
    measurement a process: the CPU's peak cannot always be reset."""
    cfg = models.autoencoder_config(args.ae)
    cfg.check_image_size(args.image_size, "--image-size")
    ae = tiling.tiled_above(models.build_autoencoder(cfg).to(device).eval(), args.tile_size)
    f, size = ae.spatial_compression_ratio, args.image_size
    shape = (args.batch_size, 3, size, size) if args.coding_memory == "encode" else \
        (args.batch_size, cfg.latent_channels, size // f, size // f)
    inputs = torch.randn(shape, device=device)
    fn = ae.encode if args.coding_memory == "encode" else ae.decode
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        files.release_free_memory()
        before = resident_bytes(reset_peak=True)
    with torch.no_grad():
        out = fn(inputs)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = peak_resident_bytes() - before
    tiles = f"{args.tile_size} px tiles" if args.tile_size and size > args.tile_size else "whole"
    print(f"{args.coding_memory} {args.ae}, {args.batch_size} x {size} px, {tiles}: peak "
          f"{peak / 2**20:.0f} MiB above the model and its input (the output itself: "
          f"{out.numel() * out.element_size() / 2**20:.0f} MiB)")
    return {"peak_bytes": peak, "output_bytes": out.numel() * out.element_size()}


def resident_bytes(reset_peak=False):
    """This process's resident memory now (Linux; elsewhere its peak so far); with reset_peak, the
    peak is set to it first (Linux's /proc/self/clear_refs)."""
    try:
        if reset_peak:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return peak_resident_bytes()


def peak_resident_bytes():
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def build_pieces(args, device):
    """{name: (function doing one iteration, items per iteration, unit)}."""
    autocast = dcae15.autocast(device)
    gen = torch.Generator(device).manual_seed(0)
    torch.manual_seed(0)
    cfg = models.autoencoder_config(args.ae)
    cfg.check_image_size(args.image_size, "--image-size")
    ae = models.build_autoencoder(cfg).to(device).set_grad_checkpointing(args.grad_checkpointing)
    f, C, B = ae.spatial_compression_ratio, ae.latent_channels, args.batch_size
    x = torch.rand(B, 3, args.image_size, args.image_size, device=device, generator=gen) * 2 - 1
    loss_fn = dcae15.AutoencoderLoss(l1_weight=1.0, lpips_weight=0.0)  # L1: no weights to download
    ae_opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    choices = dcae15.default_c_prime_choices(C)

    def ae_train():  # one structured step: c' = c/2, reconstruct, L1, backward, AdamW
        with autocast:
            rec, _ = ae(x, choices[len(choices) // 2 - 1])
            loss, _ = loss_fn.generator_loss(x, rec, 0)
        ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        ae_opt.step()

    with torch.no_grad():
        z = ae.encode(x)

    @torch.no_grad()
    def encode():
        with autocast:
            ae.encode(x)

    @torch.no_grad()
    def decode():
        with autocast:
            ae.decode(z)

    h = args.image_size // f
    cfg = models.build_backbone_config(args.dit, input_size=h, in_channels=C, num_classes=1000)
    dit = models.build_backbone(cfg).to(device).set_grad_checkpointing(args.grad_checkpointing)
    if args.compile:
        ae.compile()
        dit.compile()
    dit_opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    objective = dcae15.build_objective(args.objective)
    y = torch.randint(1000, (B,), device=device, generator=gen)
    latents = torch.randn(B, C, h, h, device=device, generator=gen)

    def dit_train(c_prime):
        def step():
            with autocast:
                loss, _ = objective.training_loss(dit, latents, y, c_prime=c_prime)
            dit_opt.zero_grad(set_to_none=True)
            loss.backward()
            dit_opt.step()
        return step

    def sample():  # the DiT's sampler with guidance, then decoding
        dcae15.generate(dit.eval(), ae.eval(), 1.0, y, gen, args.objective, args.sample_steps,
                        cfg_scale=4.0)

    pieces = {
        "AE train step (c' = c/2)": (ae_train, B, "img"),
        "AE encode": (encode, B, "img"),
        "AE decode": (decode, B, "img"),
        f"DiT train step, plain ({args.objective})": (dit_train(None), B, "latent"),
        f"DiT train step, augmented ({args.objective})": (dit_train(choices[0]), B, "latent"),
        f"sampling ({args.sample_steps} steps, guidance 4, decode)": (sample, B, "img"),
    }
    if not args.no_fid:
        inception = fid.FIDInception().to(device).eval()
        images = pictures.to_uint8(x)
        pieces["FID features (Inception, 299 px)"] = (lambda: inception(images), B, "img")
    return pieces


def main(args):
    if args.activation_memory:
        return activation_memory()
    _, _, device = distributed.setup_distributed(args.device)
    if args.coding_memory:
        return coding_memory(args, device)
    pieces = build_pieces(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.ae} + {args.dit} at {args.image_size} px, batch {args.batch_size}, on {name}"
          + (" (bf16 autocast)" if device.type == "cuda" else ""))
    cuda = device.type == "cuda"
    print(f"{'piece':<46} | {'ms / iter':>10} | {'items / s':>15} | {'GFLOP / iter':>12} | "
          f"{'TFLOP/s':>8}" + (f" | {'peak GiB':>8}" if cuda else ""))
    print("-" * (103 + 11 * cuda))
    rows = {}
    for label, (fn, items, unit) in pieces.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(fn, args.iters, args.warmup, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        flops = counted_flops(fn)
        rows[label] = {"ms": seconds * 1e3, "per_s": items / seconds, "gflop": flops / 1e9,
                       "tflops": flops / seconds / 1e12, "peak_gib": peak}
        r = rows[label]
        print(f"{label:<46} | {r['ms']:>10.1f} | {r['per_s']:>8.1f} {unit:<6} | {r['gflop']:>12.4g} | "
              f"{r['tflops']:>8.3f}" + (f" | {peak:>8.2f}" if cuda else ""))
    return rows


def build_parser():
    p = argparse.ArgumentParser(description="Throughput of each piece of dcae15 on this device.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ae", default="dc-ae-f16c64-classroom",
                   help=f"AE preset: {', '.join(models.AUTOENCODER_CONFIGS)}")
    p.add_argument("--dit", default="DiT-classroom", metavar="PRESET",
                   choices=models.BACKBONE_PRESETS,
                   help=f"diffusion model preset: {', '.join(models.BACKBONE_PRESETS)}")
    p.add_argument("--image-size", type=int, default=64, help="image resolution")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="items per iteration")
    p.add_argument("--objective", default="flow", choices=sorted(dcae15.OBJECTIVES),
                   help="the DiT's objective (and so its sampler)")
    p.add_argument("--sample-steps", type=cli.positive_int, default=50, help="sampler steps")
    p.add_argument("--iters", type=cli.positive_int, default=5, help="timed iterations of each piece")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--no-fid", action="store_true", help="skip the FID network")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="activation checkpointing in the AE and the DiT (set_grad_checkpointing)")
    p.add_argument("--compile", action="store_true", help="torch.compile the AE and the DiT (in place)")
    p.add_argument("--activation-memory", action="store_true",
                   help="instead of timing: the training steps' activation memory per image at paper "
                        "scale (f32c128 at 256 px, f64c128 at 512 px, DiT-XL), with and without "
                        "checkpointing, and the largest batch for an 80 GB card (meta device, no "
                        "memory needed)")
    p.add_argument("--coding-memory", default=None, choices=["encode", "decode"],
                   help="instead of timing: the peak memory of one encode or decode of a batch at "
                        "--image-size (random weights), whole or tiled (--tile-size)")
    p.add_argument("--tile-size", type=int, default=0,
                   help="with --coding-memory: code in tiles of this many pixels (0: whole)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    return p


if __name__ == "__main__":
    cli.command_line(main, build_parser())
