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


def test_saved_activation_bytes_by_hand():
    import torch

    import bench

    # two units, Linear + ReLU each, on a (2, 4) input, fp32. Kept without checkpointing: the input of
    # the first Linear (2 x 4 x 4 B = 32 B), each ReLU's output (2 x 8 x 4 B = 64 B; the second Linear
    # saves the same tensor as its input), never a weight: 32 + 64 + 64 = 160 B. With: each unit's
    # input (32 + 64) plus the larger unit's own (96): 192 B, more than without for a model this small.
    u1 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    u2 = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    x = torch.randn(2, 4)
    assert bench.saved_activation_bytes(lambda: u2(u1(x)).sum(), [u1, u2]) == (160, 192)


def test_activation_memory_at_paper_scale():
    proc = run_script("bench.py", ["--activation-memory"])
    rows = [[c.strip() for c in line.split("|")] for line in proc.stdout.splitlines() if "GiB" in line]
    assert len(rows) == 3
    for label, params, plain, checkpointed, batches in rows:
        plain, checkpointed = float(plain.split()[0]), float(checkpointed.split()[0])
        assert checkpointed < 0.35 * plain, label  # checkpointing keeps a block's inputs, not its insides
        without, with_ = map(int, batches.split("/"))
        assert with_ > 2.5 * without, label
