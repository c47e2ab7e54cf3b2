"""evaluate.py curve (curves.py, judge.py): the speed-up arithmetic, the CSV, the cached judge, the judge's
Fréchet distance, and the command end to end on tiny runs."""

import csv
import json
import shutil

import pytest
import torch

from helpers import run_script
from dcaelib import curves, fid, files, judge

# ---------------------------------------------------------------------------- speed-up arithmetic


def test_first_reach_interpolates_between_evaluated_steps():
    steps = [100, 200, 300, 400]
    fd = [50.0, 30.0, 20.0, 15.0]  # lower is better
    assert curves.first_reach(steps, fd, 25.0, lower=True) == (250.0, "reached")  # halfway 30 -> 20
    assert curves.first_reach(steps, fd, 20.0, lower=True) == (300.0, "reached")  # exactly at a point
    assert curves.first_reach(steps, fd, 60.0, lower=True) == (100, "before")
    assert curves.first_reach(steps, fd, 10.0, lower=True) == (None, "never")
    share = [0.2, 0.5, 0.6, 0.9]  # higher is better
    step, status = curves.first_reach(steps, share, 0.7, lower=False)
    assert status == "reached" and step == pytest.approx(300 + 100 / 3)
    # a curve that passes the target, falls back and passes it again: the first crossing counts
    assert curves.first_reach([1, 2, 3, 4], [0.1, 0.8, 0.3, 0.9], 0.5, lower=False)[0] == pytest.approx(1 + 4 / 7)


def test_speedup_factor_and_its_words():
    base_steps, base = [100, 200, 300, 400], [50.0, 40.0, 30.0, 20.0]
    s = curves.speedup(base_steps, base, [100, 200, 300, 400], [40.0, 30.0, 10.0, 5.0], lower=True)
    assert s["target"] == 20.0 and s["step"] == pytest.approx(250.0) and s["factor"] == pytest.approx(1.6)
    assert curves.format_speedup(s) == "1.60x (at step 250)"
    early = curves.speedup(base_steps, base, [100, 200], [19.0, 10.0], lower=True)
    assert early["status"] == "before" and curves.format_speedup(early) == ">4.00x (already at step 100)"
    never = curves.speedup(base_steps, base, [100, 200], [45.0, 21.0], lower=True)
    assert never["factor"] is None and curves.format_speedup(never) == "not reached"
    # the baseline against itself: reached exactly at its last step, factor 1
    assert curves.speedup(base_steps, base, base_steps, base, lower=True)["factor"] == pytest.approx(1.0)


def rows_of(label, run, seed, steps, values):
    return [{"label": label, "run": run, "seed": seed, "step": s, "share_g1": v / 100, "fd_g1": 100 - v}
            for s, v in zip(steps, values)]


def test_summary_spread_and_seed_pairs():
    rows = (rows_of("plain", "p0", 0, [10, 20], [40, 60]) + rows_of("plain", "p1", 1, [10, 20], [50, 70])
            + rows_of("aug", "a0", 0, [10, 20], [65, 80]))
    summary = curves.summarise(rows, ["share_g1", "fd_g1"])
    assert summary["plain"]["steps"] == [10, 20]
    assert summary["plain"]["fd_g1"]["mean"] == [55.0, 35.0]
    assert summary["plain"]["fd_g1"]["min"] == [50.0, 30.0] and summary["plain"]["fd_g1"]["max"] == [60.0, 40.0]
    speed = curves.speedups(summary, "plain", "fd_g1")
    # the mean plain curve ends at fd 35; aug's single run (35 -> 20) reaches it at step 10: ">2x"
    assert speed["aug"]["mean"]["status"] == "before" and speed["aug"]["mean"]["factor"] == 2.0
    # one pair per plain seed: targets 40 and 30; aug reaches 30 at 10 + (35 - 30) / 15 * 10
    factors = [p["factor"] for p in speed["aug"]["pairs"]]
    assert factors == pytest.approx([2.0, 20 / (10 + 10 / 3)])
    text = curves.curve_text(summary, ["share_g1", "fd_g1"], speed, "plain", "fd_g1")
    assert "55.00 (50.00-60.00)" in text and "speed-up of aug over plain at matched quality over fd_g1" in text


def test_csv_round_trip_and_bad_csv(tmp_path):
    rows = rows_of("plain", "runs/p", 0, [100, 200], [40.5, 61.25]) + rows_of("aug", "runs/a", 3, [100], [70])
    rows[0]["fd_g1"] = 1 / 3  # a float that needs all its digits
    path = tmp_path / "curve.csv"
    curves.write_curve_csv(rows, str(path))
    back, metrics = curves.read_curve_csv(str(path))
    assert back == rows and metrics == ["share_g1", "fd_g1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("step,label\n1,a\n")
    with pytest.raises(ValueError, match="not a curve CSV"):
        curves.read_curve_csv(str(bad))


# ---------------------------------------------------------------------------- the judge


def test_random_blur_keeps_sharp_images_at_sigma_zero_and_preserves_the_mean():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(judge.random_blur(x, 0.0), x)  # sigma ~0: a delta kernel
    blurred = judge.random_blur(x, 1.5, torch.Generator().manual_seed(0))
    assert blurred.shape == x.shape and not torch.allclose(blurred, x)
    const = torch.full((2, 3, 8, 8), 0.3)  # a normalised kernel with edge padding leaves a constant image
    torch.testing.assert_close(judge.random_blur(const, 1.5), const)
    assert blurred.std() < x.std()  # a low-pass filter removes variance from white noise


def test_frechet_distance_of_identical_feature_sets_is_zero():
    feats = torch.randn(300, 128, generator=torch.Generator().manual_seed(0)).double()
    a, b = fid.FeatureStats(dim=128), fid.FeatureStats(dim=128)
    a.add(feats)
    b.add(feats.flip(0))  # the same set in another order
    assert abs(fid.frechet_distance(*a.mu_sigma(), *b.mu_sigma())) < 1e-8
    c = fid.FeatureStats(dim=128)
    c.add(feats + 1.0)  # shifted by 1 in each of 128 dimensions: distance ||shift||^2 = 128
    assert fid.frechet_distance(*a.mu_sigma(), *c.mu_sigma()) == pytest.approx(128.0, rel=1e-6)


def test_judge_is_trained_once_per_dataset_and_then_loaded(tmp_path, monkeypatch):
    run_args = {"data": "shapes", "image_size": 16, "data_path": None, "seed": 5, "data_seed": 0}
    cache = str(tmp_path / "judges")
    first, path, trained = judge.dataset_judge(run_args, 10, 40, 2, cache, 20, torch.device("cpu"))
    assert trained and path.startswith(cache)

    def no_training(*a, **k):
        raise AssertionError("the cached judge was trained again")

    monkeypatch.setattr(judge, "train_judge", no_training)
    # another run seed (another DiT or AE on the same data): the same judge, loaded
    again, path2, trained2 = judge.dataset_judge({**run_args, "seed": 9}, 10, 40, 2, cache, 20,
                                                    torch.device("cpu"))
    assert path2 == path and not trained2
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    with pytest.raises(AssertionError, match="trained again"):  # other data: another judge
        judge.dataset_judge({**run_args, "image_size": 32}, 10, 40, 2, cache, 20, torch.device("cpu"))


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_ae):
    d = tmp_path_factory.mktemp("curve")
    (d / "ae").mkdir()
    shutil.copy(trained_ae, d / "ae" / "last.pt")
    base = ["--ae-ckpt", d / "ae" / "last.pt", "--model", "DiT-tiny", "--image-size", "16", "--max-images", "40",
            "--batch-size", "8", "--max-steps", "4", "--save-every", "2", "--sample-every", "100", "--log-every", "2",
            "--sample-steps", "2", "--cache-dir", d / "cache"]
    for name, extra in (("plain0", ["--no-augmented"]), ("plain1", ["--no-augmented", "--seed", "1"]),
                        ("aug0", [])):
        run_script("train_dit.py", [*base, *extra, "--out", d / name])
    return d


def curve_args(d, *runs):
    return ["curve", *(a for r in runs for a in ("--run", r)), "--num-images", "40", "--judge-steps", "2",
            "--batch-size", "4", "--steps", "2", "--num-samples", "6", "--num-val", "20",
            "--judge-cache", d / "judges", "--csv", d / "curve.csv", "--plot", d / "curve.png",
            "--json", d / "curve.json"]


def test_curve_end_to_end_and_cached_points(runs):
    d = runs
    proc = run_script("evaluate.py", curve_args(d, f"plain={d / 'plain0'},{d / 'plain1'}", f"aug={d / 'aug0'}"))
    assert "speed-up of aug over plain at matched quality" in proc.stdout and "judge (" in proc.stdout
    assert proc.stdout.count(" step 2: ") == 3 and proc.stdout.count(" step 4: ") == 3  # every point sampled once
    assert len(list((d / "cache").iterdir())) == 1  # --seed 1 trains on the same images: one latent cache
    with open(d / "curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], r["seed"], r["step"]) for r in rows] == [
        ("plain", "0", "2"), ("plain", "0", "4"), ("plain", "1", "2"), ("plain", "1", "4"),
        ("aug", "0", "2"), ("aug", "0", "4")]
    assert list(rows[0]) == ["label", "run", "seed", "step", "share_g1", "fd_g1", "share_g4", "fd_g4",
                             "ae_sha256", "judge_sha256", "commit", "protocol"]
    ae_sha = files.weights_sha256(files.load_checkpoint(d / "ae" / "last.pt")["ema"])
    assert {r["ae_sha256"] for r in rows} == {ae_sha} and len({r["judge_sha256"] for r in rows}) == 1
    assert rows[0]["protocol"] == "samples 6, steps 2, seed 0, val 20"
    speed = json.loads((d / "curve.json").read_text())["speedups"]["aug"]
    assert speed["n_pairs"] == 1 and speed["ci90"] is None and speed["estimate"] > 0  # seed 0 with seed 0
    assert "at matched quality" in proc.stdout and "1 pair: no interval" in proc.stdout
    result = json.loads((d / "curve.json").read_text())
    aes = result["autoencoders"]
    assert 0 <= aes["judge_ceiling"] <= 1
    # a 4-step AE's reconstructions are far from the data: further than real training images are
    assert {k for k, v in aes.items() if isinstance(v, dict)} == {str(d / "ae" / "last.pt")}
    assert aes[str(d / "ae" / "last.pt")]["fd_recon"] > aes["fd_originals"] > 0
    # the second time every point comes from the runs' curve/ folders: nothing is sampled again
    again = run_script("evaluate.py", curve_args(d, f"plain={d / 'plain0'},{d / 'plain1'}", f"aug={d / 'aug0'}"))
    assert " step 2: " not in again.stdout and "training the judge" not in again.stdout
    assert json.loads((d / "curve.json").read_text())["rows"] == result["rows"]
    # and the CSV alone redraws the table, without checkpoints
    redrawn = run_script("evaluate.py", ["curve", "--from-csv", d / "curve.csv", "--plot", d / "again.png"])
    assert "speed-up of aug over plain" in redrawn.stdout
    short = run_script("evaluate.py", ["curve", "--from-csv", d / "curve.csv", "--max-step", "3", "--plot",
                                       d / "short.png", "--json", d / "short.json"])  # the budget applies too
    assert {r["step"] for r in json.loads((d / "short.json").read_text())["rows"]} == {2}
    assert short.stdout != redrawn.stdout
    # a fixed budget: only the points up to --max-step (here cached already)
    budget = run_script("evaluate.py", [*curve_args(d, f"aug={d / 'aug0'}"), "--max-step", "3"])
    assert [r["step"] for r in json.loads((d / "curve.json").read_text())["rows"]] == [2]
    assert " step 2: " not in budget.stdout


def test_curve_add_to_grows_a_comparison_and_refuses_other_conditions(runs, tmp_path):
    d = runs
    first = tmp_path / "first.csv"
    args = [a if a != d / "curve.csv" else first for a in curve_args(d, f"plain={d / 'plain0'}")]
    run_script("evaluate.py", args)
    grown, out = tmp_path / "grown.csv", tmp_path / "grown.json"
    args = [{d / "curve.csv": grown, d / "curve.json": out}.get(a, a) for a in curve_args(d, f"aug={d / 'aug0'}")]
    run_script("evaluate.py", [*args, "--add-to", first])  # a later session's run, added
    rows, _ = curves.read_curve_csv(grown)
    assert [(r["label"], r["step"]) for r in rows] == [("plain", 2), ("plain", 4), ("aug", 2), ("aug", 4)]
    # a new arm added alone is compared with the baseline that only the CSV holds (its first label)
    result = json.loads(out.read_text())
    assert result["baseline"] == "plain" and list(result["speedups"]) == ["aug"]
    # the same seed of a label twice, another judging protocol: refused before anything is written
    args = [a if a != d / "curve.csv" else tmp_path / "no.csv" for a in curve_args(d, f"plain={d / 'plain1'}")]
    seeds = [r if r["run"] != str(d / "plain0") else {**r, "seed": 1} for r in rows]
    curves.write_curve_csv(seeds, tmp_path / "seeds.csv")
    proc = run_script("evaluate.py", [*args, "--add-to", tmp_path / "seeds.csv"], check=False)
    assert proc.returncode != 0 and "has seed 1 already" in proc.stderr and not (tmp_path / "no.csv").exists()
    proc = run_script("evaluate.py", [*args, "--add-to", grown, "--num-samples", "8"], check=False)
    assert proc.returncode != 0 and "judging protocol" in proc.stderr


def test_join_rows_keeps_one_autoencoder_per_arm_and_one_judge():
    def row(label, seed, ae="a", judge_sha="j"):
        return {"label": label, "run": f"{label}-{seed}", "seed": seed, "step": 10, "fd_g1": 1.0,
                "ae_sha256": ae, "judge_sha256": judge_sha, "commit": "c", "protocol": "p"}

    old = [row("base", 0), row("new", 0, ae="b")]
    assert len(curves.join_rows(old, [row("base", 1), row("new", 1, ae="b")], "x.csv")) == 4
    assert curves.join_rows(old, [row("base", 0)], "x.csv")[-1]["run"] == "base-0"  # measured anew
    with pytest.raises(ValueError, match="one autoencoder per arm"):
        curves.join_rows(old, [row("new", 1, ae="a")], "x.csv")
    with pytest.raises(ValueError, match="one judge"):
        curves.join_rows(old, [row("base", 1, judge_sha="k")], "x.csv")
    with pytest.raises(ValueError, match="has seed 0 already"):
        curves.join_rows(old, [{**row("base", 0), "run": "elsewhere"}], "x.csv")


def test_the_judge_is_the_same_bit_for_bit_at_any_thread_count():
    x = torch.randint(0, 256, (64, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = torch.arange(64) % 10
    threads = torch.get_num_threads()
    try:
        hashes = []
        for n in (1, 2):
            torch.set_num_threads(n)
            hashes.append(files.weights_sha256(judge.train_judge(x, y, 10, 3, torch.device("cpu")).state_dict()))
            assert torch.get_num_threads() == n  # the caller's setting is given back
    finally:
        torch.set_num_threads(threads)
    assert hashes[0] == hashes[1]


def test_curve_leaves_out_a_last_pt_that_changed_while_it_ran(runs, tmp_path, monkeypatch):
    """A run still training replaces last.pt between the listing of the points and their sampling:
    the point is left out with a message, not evaluated under the step it had when listed."""
    run = tmp_path / "aug"
    shutil.copytree(runs / "aug0", run)
    shutil.rmtree(run / "curve", ignore_errors=True)
    (run / "step_0000004.pt").unlink()  # the points: step_0000002.pt and last.pt (step 4)
    real_load = files.load_dit

    def load_a_newer_last_pt(path, *args, **kwargs):
        model, ae, ckpt = real_load(path, *args, **kwargs)
        return model, ae, {**ckpt, "step": ckpt["step"] + 1} if path.endswith("last.pt") else ckpt

    monkeypatch.setattr(files, "load_dit", load_a_newer_last_pt)
    proc = run_script("evaluate.py", curve_args(tmp_path, f"aug={run}"))
    assert "last.pt holds step 5 now, not 4" in proc.stdout
    assert [r["step"] for r in json.loads((tmp_path / "curve.json").read_text())["rows"]] == [2]
    assert [p.name.split("-")[0] for p in (run / "curve").iterdir()] == ["step_0000002"]  # nothing cached for it


def test_curve_bad_input_fails_before_any_work(runs, tmp_path):
    d = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = (([f"a={empty}"], "has no evaluable points"),
             ([f"a={tmp_path / 'nowhere'}"], "run folder not found"),
             (["a"], "expected LABEL=DIR"),
             ([f"a={d / 'plain0'},{d / 'aug0'}"], "differ in no_augmented"),
             ([f"a={d / 'plain0'}", f"a={d / 'aug0'}"], "appears twice"))
    for run_flags, message in cases:
        proc = run_script("evaluate.py", curve_args(tmp_path, *run_flags), check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "judges").exists()  # nothing trained, nothing written
    proc = run_script("evaluate.py", [*curve_args(tmp_path, f"a={d / 'aug0'}"), "--speedup-metric", "fid_g1"],
                      check=False)
    assert proc.returncode != 0 and "is not measured" in proc.stderr
    proc = run_script("evaluate.py", [*curve_args(tmp_path, f"a={d / 'aug0'}"), "--max-step", "1"], check=False)
    assert proc.returncode != 0 and "no point at or before --max-step 1" in proc.stderr


def test_curve_adds_fid_with_the_inception_weights(runs, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"  # random weights in the real file format (the real ones are offline)
    torch.save(fid.FIDInception().net.state_dict(), weights)
    args = [*curve_args(tmp_path, f"aug={runs / 'aug0'}"), "--max-step", "2", "--cfg-scales", "1", "--fid", "on",
            "--inception-weights", weights, "--num-val", "8"]
    run_script("evaluate.py", args)
    (row,) = json.loads((tmp_path / "curve.json").read_text())["rows"]
    assert set(row) - set(curves.PROVENANCE_KEYS) == {"label", "run", "seed", "step", "share_g1", "fd_g1", "fid_g1"}
    assert row["fid_g1"] >= 0
