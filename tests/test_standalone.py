"""dcae15.py stands alone: copied by itself into an empty folder, every part of it runs there (no other
file of the project can be imported), as a student who pastes it into a notebook would use it."""

import shutil
import subprocess
import sys

from helpers import ROOT

SCRIPT = r'''
import importlib.util, torch
assert importlib.util.find_spec("dcaelib") is None, "the project is importable: not a stand-alone run"
import dcae15

torch.manual_seed(0)
ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-f16c64-classroom"))
x = torch.rand(2, 3, 64, 64) * 2 - 1
z = ae.encode(x)
z8 = ae.encode(x, c_prime=8)
assert z.shape == (2, 64, 4, 4) and torch.equal(z8, z[:, :8])
torch.testing.assert_close(ae.decode(z8), ae.decode(z * dcae15.channel_mask(64, 8)), rtol=0, atol=1e-5)
rec, _ = ae(x, dcae15.sample_c_prime(dcae15.default_c_prime_choices(64), generator=torch.Generator().manual_seed(0)))
loss, terms = dcae15.AutoencoderLoss(lpips_weight=0).generator_loss(x, rec, step=0)
loss.backward()

dit = dcae15.DiT(dcae15.build_dit_config("DiT-classroom", input_size=4, in_channels=64, num_classes=10))
y = torch.tensor([0, 1])
for objective in (dcae15.FlowMatching(), dcae15.GaussianDiffusion()):
    loss, terms = objective.training_loss(dit, z.detach(), y, c_prime=16)  # augmented diffusion training
    assert set(terms) == {"loss_full", "loss_masked"} and torch.isfinite(loss)
    loss.backward()
images = dcae15.generate(dit.eval(), ae.eval(), 0.5, y, torch.Generator().manual_seed(0), "flow", steps=2,
                         cfg_scale=2.0, c_prime=8)
assert images.shape == (2, 3, 64, 64)

torch.save({"state_dict": {f"module.{k}": v for k, v in ae.state_dict().items()}}, "official.pt")
loaded, scale = dcae15.DCAE.from_pretrained("official.pt", "dc-ae-f16c64-classroom")
assert scale is None and torch.equal(loaded.encode(x), ae.encode(x))
print("stand-alone ok")
'''


def test_dcae15_alone_in_an_empty_folder(tmp_path):
    shutil.copy(f"{ROOT}/dcae15.py", tmp_path / "dcae15.py")
    (tmp_path / "use_it.py").write_text(SCRIPT)
    # -E -s: no PYTHONPATH, no user site; the script's own folder is the only project path
    proc = subprocess.run([sys.executable, "-E", "-s", "-W", "ignore", "use_it.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "stand-alone ok" in proc.stdout, proc.stderr
