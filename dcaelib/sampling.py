"""
sampling.py: samples in batches, each batch's noise from its own seeded generator, so that the same
seed and batch size give the same images whichever process draws a batch (sample.py, evaluate.py's
fid, the judge).
"""

import torch

import dcae15


def batch_generator(seed, b, device):
    """The generator of sample batch b: (seed, b) alone decide it."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + b)


@torch.no_grad()
def sample_batches(model, ae, ckpt, num_samples, batch_size, seed, device, labels=None,
                   batches=None, **generate_options):
    """Yields (b, labels, images) for the batches `batches` (default: all) of `num_samples` samples
    from a train_dit.py checkpoint's model: images (B, 3, H, W) in about [-1, 1] from
    dcae15.generate (generate_options: steps, method, cfg_scale, c_prime, eta). `labels`: the class
    of every sample (a tensor of num_samples), or None to draw each batch's at random from its
    generator, as the official FID evaluation draws them."""
    n_batches = (num_samples + batch_size - 1) // batch_size
    for b in range(n_batches) if batches is None else batches:
        size = min(batch_size, num_samples - b * batch_size)
        gen = batch_generator(seed, b, device)
        if labels is None:
            y = torch.randint(model.cfg.num_classes, (size,), generator=gen, device=device)
        else:
            y = labels[b * batch_size : b * batch_size + size].to(device)
        yield b, y, dcae15.generate(model, ae, ckpt["latent_scale"], y, gen, ckpt["objective"],
                                    **generate_options)
