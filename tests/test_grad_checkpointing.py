"""Activation checkpointing (`set_grad_checkpointing`) changes memory, not results: the same loss
and gradients as without (fp32), and at most ~0.6x the activation memory of a classroom AE step."""

import os
import subprocess
import sys

import pytest
import torch

import dcae15
from dcaelib import models
from helpers import ROOT


def loss_and_grads(model, forward):
    model.zero_grad(set_to_none=True)
    loss = forward()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("c_prime", [None, 5, [2, 8]])
def test_ae_with_checkpointing_has_the_same_loss_and_gradients(c_prime):
    torch.manual_seed(0)
    ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    def forward():
        rec, _ = ae(x, c_prime)
        return sum((r - x).abs().mean() for r in (rec if isinstance(rec, list) else [rec]))

    plain = loss_and_grads(ae, forward)
    checkpointed = loss_and_grads(ae.set_grad_checkpointing(True), forward)
    assert torch.allclose(plain[0], checkpointed[0], rtol=0, atol=1e-6)
    assert plain[1].keys() == checkpointed[1].keys() and len(plain[1]) == len(list(ae.parameters()))
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], rtol=1e-5, atol=1e-7), name
    with torch.no_grad():  # inference does not checkpoint (nothing to save)
        assert torch.equal(ae.set_grad_checkpointing(False)(x)[0], ae.set_grad_checkpointing(True)(x)[0])


@pytest.mark.parametrize("objective,preset", [("flow", "DiT-tiny"), ("ddpm", "DiT-tiny"), ("flow", "UViT-tiny")])
def test_dit_with_checkpointing_has_the_same_augmented_loss_and_gradients(objective, preset):
    torch.manual_seed(0)
    dit = models.build_backbone(models.build_backbone_config(preset, input_size=4, in_channels=8, num_classes=10))
    diffusion = dcae15.build_objective(objective)
    x, y = torch.randn(4, 8, 4, 4), torch.tensor([0, 1, 2, 10])

    def forward():  # the same draws of t, noise and label dropout both times
        return diffusion.training_loss(dit, x, y, c_prime=3, generator=torch.Generator().manual_seed(1))[0]

    torch.manual_seed(2)
    plain = loss_and_grads(dit, forward)
    torch.manual_seed(2)
    checkpointed = loss_and_grads(dit.set_grad_checkpointing(True), forward)
    assert torch.allclose(plain[0], checkpointed[0], rtol=0, atol=1e-6)
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], rtol=1e-5, atol=1e-7), name


# Peak resident memory of one classroom AE training step (batch 16, 64 px, c' = 32, AdamW) above the
# memory of the process between steps: the activations and temporaries of the step, without and then
# with checkpointing, in one process. glibc is told to give large blocks back when they are freed
# (MALLOC_MMAP_THRESHOLD_), so that the resident memory follows the tensors alive; the peak is reset
# after a first step of each kind (/proc/self/clear_refs: Linux).
STEP_MEMORY = """
import torch, dcae15
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
torch.manual_seed(0)
ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-f16c64-classroom"))
opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
x = torch.rand(16, 3, 64, 64) * 2 - 1
def step():
    rec, _ = ae(x, 32)
    opt.zero_grad(set_to_none=False)  # the gradients stay allocated between steps
    (rec - x).abs().mean().backward()
    opt.step()
for checkpointing in (False, True):
    ae.set_grad_checkpointing(checkpointing)
    step()
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    step()
    print(status("VmHWM:") - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures with Linux's /proc")
def test_checkpointing_needs_at_most_0_6x_the_activation_memory_of_a_classroom_ae_step():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", STEP_MEMORY], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300)
    off, on = map(int, out.stdout.split()[-2:])
    assert off > 30 * 2**20, f"the step's activations were not seen ({off} bytes)"
    assert on <= 0.6 * off, f"with checkpointing {on / 2**20:.1f} MB, without {off / 2**20:.1f} MB"
