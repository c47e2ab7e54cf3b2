"""bench.py: every piece is timed, and the FLOP counts have the ratios the algorithms imply."""

import pytest

from helpers import run_script


def test_bench_counts_what_each_piece_computes(tmp_path):
    proc = run_script("bench.py", ["--ae", "dc-ae-tiny", "--dit", "DiT-tiny", "--image-size", "16", "--batch-size",
                                   "4", "--iters", "1", "--warmup", "0", "--sample-steps", "2", "--no-fid",
                                   "--device", "cpu"])
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 5 and cells[1][:1].isdigit():
            rows[cells[0]] = {"ms": float(cells[1]), "gflop": float(cells[3])}
    assert len(rows) == 6 and all(r["ms"] > 0 for r in rows.values())
    enc, dec = rows["AE encode"]["gflop"], rows["AE decode"]["gflop"]
    train = rows["AE train step (c' = c/2)"]["gflop"]
    assert 2.5 * (enc + dec) < train < 3.5 * (enc + dec)  # forward + backward (about 2x the forward)
    plain, aug = rows["DiT train step, plain (flow)"]["gflop"], rows["DiT train step, augmented (flow)"]["gflop"]
    assert aug == pytest.approx(2 * plain, rel=0.05)  # augmented training: a second, masked pass


def test_bench_bad_input():
    proc = run_script("bench.py", ["--image-size", "60", "--iters", "1"], check=False)
    assert proc.returncode != 0 and "not divisible" in proc.stderr and "Traceback" not in proc.stderr
