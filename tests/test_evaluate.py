"""evaluate.py (fid.py, metrics.py): the FID Inception, Fréchet distance, streaming statistics, PSNR/SSIM, and the
commands."""

import json
import shutil
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image

from helpers import run_script
from dcaelib import data, fid, files, judge, metrics, pictures



@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return fid.FIDInception().eval()  # random weights: the real ones cannot be downloaded here


def test_inception_keys_match_torchvision_so_real_weights_load(inception, tmp_path):
    ref = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    ours = inception.net.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.state_dict().items()}
    path = tmp_path / fid.FID_WEIGHTS_FILE
    torch.save(ref.state_dict(), path)
    loaded = fid.FIDInception().load_weights(str(path))  # strict
    assert torch.equal(loaded.net.Mixed_7c.branch_pool.conv.weight, ref.Mixed_7c.branch_pool.conv.weight)


def test_feature_shapes_and_batch_independence(inception):
    small = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)  # resized to 299 inside
    feats = inception(small)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64
    assert inception(torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)).shape == (1, 2048)
    one_by_one = torch.cat([inception(small[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(feats, one_by_one, rtol=1e-4, atol=1e-6)


def test_tf_pooling_changes():
    ones = torch.ones(1, 2, 5, 5)
    # TF's average pool ignores the padding: a constant stays constant at the border (torch's default: 4/9)
    torch.testing.assert_close(fid._avg_pool_no_pad(ones), ones)
    net = fid.FIDInception().net
    assert isinstance(net.Mixed_5b, fid.FIDInceptionA) and isinstance(net.Mixed_6e, fid.FIDInceptionC)
    assert not net.Mixed_7b.max_pool and net.Mixed_7c.max_pool


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 6))
    sigma = np.cov(a, rowvar=False)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert fid.frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0, abs=1e-9)
    assert fid.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(((mu1 - mu2) ** 2).sum(), abs=1e-9)
    d1, d2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(closed, rel=1e-10)
    # a general case against scipy's sqrtm formula
    s2 = np.cov(rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6)), rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(sigma) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(sigma @ s2).real)
    assert fid.frechet_distance(mu1, sigma, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_streaming_stats_merge_and_npz_round_trip(tmp_path):
    feats = torch.randn(300, 16, dtype=torch.float64) * 3 + 1
    a, b = fid.FeatureStats(16), fid.FeatureStats(16)
    a.add(feats[:120])
    b.add(feats[120:200])
    b.add(feats[200:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 300 images for 16 dimensions: a full-rank covariance, no warning
        mu, sigma = a.merge(b).mu_sigma()
    few = fid.FeatureStats(16)
    few.add(feats[:10])
    with pytest.warns(UserWarning, match="from 10 < 16 images"):  # rank-deficient: say so
        few.mu_sigma()
    np.testing.assert_allclose(mu, feats.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    path = str(tmp_path / "stats.npz")
    files.save_npz(path, mu=mu, sigma=sigma)
    mu2, sigma2 = fid.load_stats(path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    np.savez(tmp_path / "bad.npz", arr_0=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        fid.load_stats(str(tmp_path / "bad.npz"))


def test_ssim_known_pairs():
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), the contrast-structure term is 1
    a, b = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8), torch.full((1, 3, 16, 16), 150, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(a, b).item() == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    noisy = (x.int() + torch.randint(-30, 31, x.shape)).clamp(0, 255).to(torch.uint8)
    assert 0 < metrics.ssim(noisy, x).min() < 1


def test_laplacian_energy_and_sharpness():
    flat = torch.full((1, 3, 12, 12), 77, dtype=torch.uint8)
    assert metrics.laplacian_energy(flat).item() == 0  # no detail at all
    # a checkerboard of 0 / 255: every interior Laplacian is +-4 * 255
    board = ((torch.arange(12)[:, None] + torch.arange(12)[None]) % 2 * 255).to(torch.uint8).expand(1, 3, 12, 12)
    assert metrics.laplacian_energy(board).item() == pytest.approx((4 * 255) ** 2)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    blurred = pictures.to_uint8(judge.random_blur(x.float() / 127.5 - 1, 2.0).clamp(-1, 1))
    before, after = metrics.laplacian_energy(x), metrics.laplacian_energy(blurred)
    assert (after <= before).all() and after.mean() < 0.5 * before.mean()  # blur (random sigma) loses detail


def run(args):
    return run_script("evaluate.py", args, check=False)


def test_commands_end_to_end(tmp_path, trained_ae):
    # a tiny AE checkpoint and random-weight Inception "FID weights"
    (tmp_path / "ae").mkdir()
    shutil.copy(trained_ae, tmp_path / "ae" / "last.pt")
    weights = str(tmp_path / "inception.pth")
    torch.manual_seed(0)
    torch.save(fid.FIDInception().net.state_dict(), weights)
    ckpt = str(tmp_path / "ae" / "last.pt")

    out_json = str(tmp_path / "recon.json")
    proc = run(["recon", "--ae-ckpt", ckpt, "--baseline-ckpt", ckpt, "--image-size", "16", "--num-images", "2",
                "--c-primes", "8", "--inception-weights", weights, "--lpips", "off", "--json", out_json])
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out_json))["results"]
    assert set(result) == {"model", "baseline"} and set(result["model"]) == {"8"}
    assert set(result["model"]["8"]) == {"psnr", "ssim", "sharpness", "rfid"}
    assert result["model"]["8"] == result["baseline"]["8"]  # same checkpoint in both columns
    assert "c_prime" in proc.stdout and "model psnr" in proc.stdout

    # offline without the Inception weights: recon goes on without rFID, fid/ref stop with a clear message
    grid = tmp_path / "grid.png"
    proc = run(["recon", "--ae-ckpt", ckpt, "--image-size", "16", "--num-images", "2", "--lpips", "off",
                "--c-primes", "2,8", "--inception-weights", str(tmp_path / "missing.pth"),
                "--grid", str(grid), "--json", out_json])
    assert proc.returncode == 0 and "rFID skipped" in proc.stdout
    result = json.load(open(out_json))["results"]
    assert set(result) == {"model"} and set(result["model"]) == {"2", "8"}
    assert set(result["model"]["2"]) == {"psnr", "ssim", "sharpness"}
    # the grid: 2 rows (images) x 3 columns (original, c' = 2, c' = 8), 16 px tiles with 2 px gaps;
    # its first column is the originals, pixel for pixel
    picture = torch.from_numpy(np.array(Image.open(grid))).permute(2, 0, 1)
    assert picture.shape == (3, 2 + 2 * 18, 2 + 3 * 18)
    originals = pictures.to_uint8(torch.stack([data.ShapesDataset("val", image_size=16)[i][0] for i in range(2)]))
    assert torch.equal(picture[:, 2:18, 2:18], originals[0]) and torch.equal(picture[:, 20:36, 2:18], originals[1])
    for flag in ("--grid", "--json"):  # refused before any work
        proc = run(["recon", "--ae-ckpt", ckpt, "--image-size", "16", flag, str(tmp_path / "no" / "out")])
        assert proc.returncode != 0 and f"{flag} " in proc.stderr and "folder does not exist" in proc.stderr
    # --num-images 0 is every image of the split: the shapes set's 1000 validation images
    proc = run(["recon", "--ae-ckpt", ckpt, "--image-size", "16", "--num-images", "0", "--c-primes", "8",
                "--lpips", "off", "--fid", "off", "--batch-size", "250", "--json", out_json])
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(out_json))["num_images"] == 1000 and "1000 shapes val images" in proc.stdout

    ref = str(tmp_path / "ref.npz")
    proc = run(["ref", "--image-size", "16", "--num-images", "3", "--inception-weights", weights, "--out", ref])
    assert proc.returncode == 0, proc.stderr
    ds = data.ShapesDataset("train", image_size=16)
    imgs = pictures.to_uint8(torch.stack([ds[i][0] for i in range(3)])).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "same.npz", arr_0=imgs)
    proc = run(["fid", "--samples", str(tmp_path / "same.npz"), "--ref", ref, "--inception-weights", weights,
                "--batch-size", "2"])
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout.split("FID ")[1].split()[0])) < 1e-3  # the same images: FID 0
    proc = run(["fid", "--samples", str(tmp_path / "same.npz"), "--ref", ref,
                "--inception-weights", str(tmp_path / "missing.pth")])
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_npy_rows_npz_assembly_and_batched_reading(tmp_path):
    """sample.py's files: rows written in place by several writers, an .npz copied from them in chunks, and
    evaluate.py fid's batch-by-batch reading; compressed .npz files read the same way."""
    a = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    rows = str(tmp_path / "rows.npy")
    files.create_npy(rows, a.shape, np.uint8)
    files.write_npy_rows(rows, 4, a[4:])  # any order, any writer
    files.write_npy_rows(rows, 0, a[:4])
    assert np.array_equal(np.load(rows), a)
    with pytest.raises(ValueError, match="do not fit"):
        files.write_npy_rows(rows, 8, a[:4])  # past the end
    labels = str(tmp_path / "labels.npy")
    np.save(labels, np.arange(10))
    npz = str(tmp_path / "s.npz")
    files.npz_from_npy(npz, {"arr_0": rows, "arr_1": labels}, chunk=7)  # chunks that split rows
    with np.load(npz) as z:
        assert np.array_equal(z["arr_0"], a) and np.array_equal(z["arr_1"], np.arange(10))
    assert np.array_equal(np.concatenate(list(files.npz_batches(npz, batch_size=3))), a)
    mine = list(files.npz_batches(npz, batch_size=3, rank=1, world=2))  # batches 1 and 3
    assert np.array_equal(np.concatenate(mine), np.concatenate([a[3:6], a[9:]]))
    np.savez_compressed(tmp_path / "c.npz", arr_0=a)
    assert np.array_equal(np.concatenate(list(files.npz_batches(str(tmp_path / "c.npz"), batch_size=4))), a)
    with pytest.raises(ValueError, match="has no array 'arr_2'"):
        next(files.npz_batches(npz, "arr_2"))


def test_tail_from_keeps_zeroes_averages_and_shuffles_the_last_channels(tmp_path, trained_ae):
    """recon --tail-from K: "kept" is the full latent's reconstruction and "zeroed" the first K channels'
    (the adaptive input conv zero-fills), to the last digit of the c' table; the mean over one image is
    that image's own tail, so with one image all four ways agree."""
    out_json = str(tmp_path / "recon.json")
    common = ["--ae-ckpt", trained_ae, "--image-size", "16", "--c-primes", "4,8", "--lpips", "off",
              "--fid", "off", "--tail-from", "4", "--json", out_json]
    proc = run(["recon", "--num-images", "6", *common])
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out_json))
    tail, per_c = result["tail"]["model"], result["results"]["model"]
    assert abs(tail["kept"]["psnr"] - per_c["8"]["psnr"]) < 1e-9
    assert abs(tail["zeroed"]["psnr"] - per_c["4"]["psnr"]) < 1e-9
    assert tail["shuffled"]["psnr"] != tail["kept"]["psnr"]  # six images, other images' channels
    assert "replaced by their mean" in proc.stdout
    proc = run(["recon", "--num-images", "1", *common])
    one = json.load(open(out_json))["tail"]["model"]
    assert one["mean"] == one["shuffled"] == one["kept"] != one["zeroed"]
    proc = run(["recon", "--ae-ckpt", trained_ae, "--image-size", "16", "--tail-from", "8"])
    assert proc.returncode != 0 and "--tail-from 8" in proc.stderr and "Traceback" not in proc.stderr
