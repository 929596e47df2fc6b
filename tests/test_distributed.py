"""torchrun with two CPU processes (gloo) trains like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from bytemodels import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from bytemodels.config import MegabyteConfig
    from bytemodels.data import ByteDataset
    from bytemodels.train import Trainer, TrainConfig

    cache, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    docs = [bytes(rng.integers(97, 123, int(rng.integers(5, 60))).astype(np.uint8)) for _ in range(100)]
    # Every rank builds: concurrent builds of one cache are safe (the first rename wins).
    data = ByteDataset.build(docs, cache, key={"ddp": 1}, layout="records", val_fraction=0.1, progress=False)
    model = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32)
    budget = dict(max_steps=None, time=sys.argv[4], compile=True, sample_every=2) if len(sys.argv) > 4 else {}
    train = TrainConfig(**{**dict(out_dir=out, batch_size=batch_size, max_steps=6, lr=3e-3, warmup_steps=2,
                                  eval_every=3, eval_windows=7, checkpoint_every=3, log_every=1, progress=False,
                                  device="cpu", dtype="fp32"), **budget})  # fp32: bf16 rounds by batch split
    trainer = Trainer(model, train, data.train, data.val, sample_fn=lambda model, step, folder: time.sleep(0.2))
    summary = trainer.fit()
    # The process group freed at the end of fit: gloo's threads stopped, none left to the interpreter's exit.
    tasks = "/proc/self/task"
    gloo = (sum("gloo" in open(f"{tasks}/{task}/comm").read() for task in os.listdir(tasks))
            if os.path.isdir(tasks) else None)
    rank = int(os.environ.get("RANK", 0))
    # One file per rank: two ranks printing to one pipe can interleave their lines.
    with open(os.path.join(out, f"report_rank{rank}.json"), "w") as report:
        json.dump({"rank": rank, "step": summary.step, "val_bpb": summary.val_bpb, "bytes": summary.bytes_seen,
                   "horizon": trainer.horizon, "compiled": trainer.compiled, "gloo_threads": gloo}, report)
""")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cache = str(tmp_path / "cache")
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), cache, str(tmp_path / "two"), "2"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = subprocess.run([sys.executable, str(script), cache, str(tmp_path / "one"), "4"], env=env,
                         capture_output=True, text=True, timeout=120)
    _, err_two = two.communicate(timeout=120)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, err_two

    reports = [json.loads(path.read_text()) for path in sorted((tmp_path / "two").glob("report_rank*.json"))]
    single = json.loads((tmp_path / "one" / "report_rank0.json").read_text())
    assert [r["rank"] for r in reports] == [0, 1]
    if sys.platform == "linux":  # threads named in /proc
        assert [r["gloo_threads"] for r in reports] == [0, 0]
    for report in reports:  # every rank agrees on the result
        assert report["step"] == single["step"] == 6 and report["bytes"] == single["bytes"]
        assert report["val_bpb"] == pytest.approx(single["val_bpb"], abs=1e-4)

    a = load_file(str(tmp_path / "one" / "checkpoints" / "step_000006" / ckpt.WEIGHTS_FILE))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "step_000006" / ckpt.WEIGHTS_FILE))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
               if "loss" in line] for name in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 6  # rank 0 alone writes the metrics
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_take_the_same_time_budget_decisions(tmp_path):
    # Only rank 0 samples (slowly) and checkpoints: every process must still stop at the same step with the same
    # schedule horizon and the same compile decision, or the next all-reduce would hang.
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "home")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "cache"), str(tmp_path / "two"), "2", "4s"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    reports = [json.loads(path.read_text()) for path in sorted((tmp_path / "two").glob("report_rank*.json"))]
    assert len(reports) == 2 and reports[0]["step"] > 0
    assert {(r["step"], r["horizon"], r["compiled"]) for r in reports} == {(reports[0]["step"], reports[0]["horizon"],
                                                                           False)}
    if sys.platform == "linux":
        assert [r["gloo_threads"] for r in reports] == [0, 0]
