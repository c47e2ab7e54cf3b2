"""data.py: the built-in shapes dataset, image folders, CIFAR-10, the resumable distributed sampler;
and metrics.psnr."""

import math

import pytest
import torch

from dcaelib import data, files, metrics



def test_shapes_deterministic_per_index_and_split():
    a, b = data.ShapesDataset("train", image_size=32, seed=0), data.ShapesDataset("train", image_size=32, seed=0)
    x, y = a[123]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, b[123][0]) and y == b[123][1] == 3  # label = index % 10
    assert not torch.equal(x, a[133][0])  # same class, another image
    assert not torch.equal(x, data.ShapesDataset("val", image_size=32)[123][0])
    assert not torch.equal(x, data.ShapesDataset("train", image_size=32, seed=1)[123][0])
    assert torch.bincount(torch.tensor([a[i][1] for i in range(100)])).tolist() == [10] * 10
    with pytest.raises(IndexError):
        a[len(a)]


def test_shape_classes_are_distinct_under_rotation():
    n = 96
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    masks = []
    for cls in range(len(data.SHAPE_CLASSES)):
        rotated = []
        for k in range(24):  # every 15 degrees
            a = 2 * math.pi * k / 24
            u, v = math.cos(a) * gx + math.sin(a) * gy, -math.sin(a) * gx + math.cos(a) * gy
            rotated.append(data.shape_mask(cls, u, v).float())
        masks.append(torch.stack(rotated))
        assert 0.05 < rotated[0].mean() < 0.7  # a visible object that fits the frame
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            inter = (masks[i][:1] * masks[j]).sum(dim=(1, 2))
            union = ((masks[i][:1] + masks[j]) > 0).float().sum(dim=(1, 2))
            best_iou = (inter / union).max().item()  # shape j at its best rotation against shape i
            assert best_iou < 0.85, (data.SHAPE_CLASSES[i], data.SHAPE_CLASSES[j], best_iou)


def _steps(sampler, n_steps):
    it = iter(sampler)
    return [[next(it) for _ in range(sampler.local_batch)] for _ in range(n_steps)]


def test_step_sampler_resume_and_world_size_independence():
    full = _steps(data.StepSampler(103, 8, 0, 1, seed=5), 30)  # crosses epochs (12 steps each)
    assert _steps(data.StepSampler(103, 8, 0, 1, seed=5, start_step=17), 13) == full[17:]
    for k in (0, 12, 25):  # epoch boundaries: each epoch is a fresh permutation
        assert len(set(full[k])) == 8
    assert set(sum(full[:12], [])) != set(sum(full[12:24], [])) or full[:12] != full[12:24]
    ranks = [_steps(data.StepSampler(103, 8, r, 2, seed=5), 30) for r in range(2)]
    for k in range(30):  # two ranks see disjoint halves of the same global batch
        assert ranks[0][k] + ranks[1][k] == full[k]
        assert not set(ranks[0][k]) & set(ranks[1][k])
    with pytest.raises(ValueError, match="divisible"):
        data.StepSampler(103, 8, 0, 3, seed=0)


def test_psnr_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[0] += 10 / 127.5  # uint8 values 128 vs 138: MSE 100
    p = metrics.psnr(y, x)
    assert p[0].item() == pytest.approx(10 * math.log10(255**2 / 100))
    assert p[1].item() > 90  # identical images


def test_adm_center_crop():
    from PIL import Image

    img = Image.new("RGB", (300, 200), (10, 20, 30))
    out = data.adm_center_crop(img, 64)
    assert out.size == (64, 64)
    x = data.pil_to_tensor(out)
    assert x.shape == (3, 64, 64) and torch.allclose(x[:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)


def test_imagefolder_and_offline_cifar(tmp_path, monkeypatch):
    from PIL import Image

    for label, cls in enumerate(("cat", "dog")):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (100 * i, 50, 200 * label)).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = data.build_dataset("imagefolder", "train", 16, str(tmp_path / "imgs"))
    x, y = ds[3]
    assert len(ds) == 4 and ds.num_classes == 2 and x.shape == (3, 16, 16) and y == 1
    torch.testing.assert_close(x[:, 8, 8], torch.tensor([100, 50, 200]) / 127.5 - 1)

    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*--data shapes"):
        data.build_dataset("cifar10", "train", 32, str(tmp_path / "cifar"))


def bad_folder(root):
    """Two classes of small PNGs and, among them, a truncated JPEG."""
    from PIL import Image

    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (24, 24), (60 * i, 50, 200 * label)).save(root / cls / f"{i}.png")
    Image.new("RGB", (24, 24), (1, 2, 3)).save(root / "cat" / "2.jpg")
    (root / "cat" / "2.jpg").write_bytes((root / "cat" / "2.jpg").read_bytes()[:200])  # truncated
    return str(root / "cat" / "2.jpg")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_bad_image_stops_training_with_one_line_naming_it_or_is_skipped(tmp_path, workers):
    import os
    import subprocess
    import sys

    from helpers import ROOT, run_script

    bad = bad_folder(tmp_path / "imgs")
    args = ["--model", "dc-ae-tiny", "--data", "imagefolder", "--data-path", str(tmp_path / "imgs"),
            "--image-size", "16", "--batch-size", "9", "--max-steps", "1", "--perceptual", "off",
            "--num-workers", workers, "--out", str(tmp_path / "run")]

    skip = ["--skip-bad-images", "--out", str(tmp_path / "skip")]
    if workers == "0":  # in this process
        proc, skipped = [run_script("train_ae.py", [*args, *more], check=False) for more in ([], skip)]
    else:  # real processes (both at once): what a data loader worker writes to stderr is what the user sees
        procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train_ae.py"), *args, *more],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for more in ([], skip)]
        outs = [p.communicate(timeout=300) for p in procs]
        proc, skipped = [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outs)]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, from a worker process too
    assert line.startswith(f"train_ae.py: error: cannot read image {bad} (") and "--skip-bad-images" in line, line
    assert skipped.returncode == 0, skipped.stderr
    assert f"warning: skipped unreadable image {bad}" in skipped.stderr


def test_skipped_image_is_replaced_by_the_next_readable_one(tmp_path):
    bad = bad_folder(tmp_path / "imgs")
    ds = data.build_dataset("imagefolder", "train", 16, str(tmp_path / "imgs"), skip_bad=True)
    i = [path for path, _ in ds.base.samples].index(bad)
    x, y = ds[i]
    x_next, y_next = ds[(i + 1) % len(ds)]
    assert torch.equal(x, x_next) and y == y_next and ds.skipped == {bad}
    strict = data.build_dataset("imagefolder", "train", 16, str(tmp_path / "imgs"))
    with pytest.raises(data.BadImageError, match="cannot read image .*2.jpg"):
        strict[i]


def test_cache_encoding_writes_each_batch_at_its_rows_and_frees_memory_after_it(tiny_ae, tmp_path, monkeypatch):
    import numpy as np

    import train_dit

    calls = []
    monkeypatch.setattr(files, "release_free_memory", lambda: calls.append(1) or True)
    ds = data.build_dataset("shapes", "train", 16, size=10)
    rows = str(tmp_path / "rows.npy")
    files.create_npy(rows, (10, 8, 4, 4), "float32")
    labels = train_dit.encode_into(tiny_ae, ds, rows, False, [2, 0, 1], 4, 0, torch.device("cpu"))
    assert len(calls) == 3  # once per batch: the process stays at one batch's memory
    x = torch.stack([ds[i][0] for i in range(10)])
    with torch.no_grad():
        np.testing.assert_allclose(np.load(rows), tiny_ae.encode(x).numpy(), rtol=1e-5, atol=1e-5)
    assert sorted(labels) == [0, 4, 8]
