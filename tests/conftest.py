import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dcae15  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_ae():
    """The fact sheet's 34-key tiny DC-AE 1.5 (f4, 8 latent channels), with non-trivial norm affines."""
    ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if "norm" in name:  # the default (1, 0) affine would hide bugs in how it is applied
                p.add_(0.1 * torch.randn_like(p))
    return ae.eval()


@pytest.fixture(scope="session")
def trained_ae(tmp_path_factory):
    """The path of a tiny trained autoencoder (dc-ae-tiny, 16 px, 2 steps): the one AE every test of a
    script that needs a trained one starts from (train_dit.py, evaluate.py, the guard, compile)."""
    from helpers import run_script

    out = tmp_path_factory.mktemp("trained") / "ae"
    run_script("train_ae.py", ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4",
                               "--perceptual", "off", "--max-steps", "2", "--out", out])
    return str(out / "last.pt")


@pytest.fixture
def safetensors(monkeypatch):
    """safetensors.torch, importable: the real package where it is installed, else the format's
    stand-in from helpers (the package is optional, and CI does not install it)."""
    try:
        import safetensors.torch as module
    except ImportError:
        from helpers import mini_safetensors

        package, module = mini_safetensors()
        monkeypatch.setitem(sys.modules, "safetensors", package)
        monkeypatch.setitem(sys.modules, "safetensors.torch", module)
    return module
