"""The benchmark scripts' own logic that needs no peer package: compare.py's flags, the flat baseline, the
compressor rows, validation_windows' samples. (Running the peers needs the ``bench`` extra; the scripts' ``--quick``
runs cover that.)"""

from __future__ import annotations

import bz2
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import compare, compressors, validation_windows
from benchmarks.baselines import flat_config_matching
from bytemodels import MegabyteConfig, Megabyte
from bytemodels.checkpoint import save_checkpoint
from bytemodels.data import ByteDataset
from bytemodels.app.flags import overrides_from_args


def test_compare_model_flags_are_the_config_fields() -> None:
    args = compare.parse_args(["--dims", "32,16", "--layers", "1,1", "--heads", "2,1", "--no-cross-patch",
                               "--rope-base", "500", "--max-seq-len", "64"])
    overrides = overrides_from_args(MegabyteConfig, args)
    assert overrides == {"dims": (32, 16), "layers": (1, 1), "heads": (2, 1), "cross_patch": False,
                         "rope_base": 500.0, "max_seq_len": 64}
    data = compare.BenchData("toy", "toy", "packed", 0, {}, [b"x"], lambda: iter(()))
    config = compare.model_config("tiny", data, overrides)
    assert (config.dims, config.cross_patch, config.rope_base, config.qk_norm) == ((32, 16), False, 500.0, True)
    # Flags not given stay out, so the preset and the data set's shape decide.
    assert overrides_from_args(MegabyteConfig, compare.parse_args([])) == {}


def test_compare_rejects_unknown_peers_and_bad_field_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(["--peers", "bytemodels,gpt5"])
    assert "unknown ['gpt5']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--dims", "wide"])


def test_flat_baseline_matches_the_parameter_count_and_is_causal() -> None:
    config = MegabyteConfig.preset("tiny", dims=(64, 32), layers=(2, 1), heads=(2, 1), max_seq_len=64)
    ours = Megabyte(config).num_parameters()
    torch.manual_seed(0)
    flat = compare.build_peer("flat", config, seed=0)
    assert flat.config.dim == 64
    assert abs(flat.num_parameters() - ours) / ours < 0.25  # the nearest whole number of blocks
    ids = torch.randint(0, 256, (2, 64))
    assert compare.is_causal(flat, ids, 20) and compare.is_causal(Megabyte(config), ids, 20)


def test_flat_config_matching_picks_the_nearest_depth() -> None:
    config = MegabyteConfig.preset("tiny")
    shallow, deep = flat_config_matching(config, 10**5), flat_config_matching(config, 10**7)
    assert shallow.layers == 1 and deep.layers > 10
    assert (deep.token_shift, deep.qk_norm) == (config.token_shift, config.qk_norm)


def test_compressor_rows_are_bits_per_byte() -> None:
    items = [b"once upon a time " * 40, bytes(range(256)) * 2]
    rows = compressors.general_rows(items)
    joined = b"".join(items)
    bzip2_joined = [value for name, value in rows.items() if name.startswith("bzip2") and "joined" in name]
    assert bzip2_joined == [pytest.approx(8 * len(bz2.compress(joined, 9)) / len(joined))]
    assert all(0 < value < 8 for name, value in rows.items() if "joined" in name)


def test_compare_reports_a_bad_model_shape_in_one_line(tmp_path) -> None:
    # Heads that do not divide the width: refused before any model is built or trained.
    stories = tmp_path / "tinystories"
    stories.mkdir()
    for split in ("train", "valid"):
        (stories / f"{split}.txt").write_text("Once upon a time.\n<|endoftext|>\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"compare.py: text: .*head"):
        compare.main(["--skip-compressors", "--dims", "30,16", "--heads", "4,2", "--data-dir", str(tmp_path),
                      "--out", str(tmp_path)])


def test_compare_names_a_missing_data_file_in_one_line(tmp_path) -> None:
    # Run from a copy of the repository with no ../shared beside it: the file it looked for, not a traceback.
    missing = tmp_path / "no-data"
    expected = rf"compare.py: text: {missing}/tinystories/train.txt: No such file.*--data-dir"
    with pytest.raises(SystemExit, match=expected):
        compare.main(["--modality", "text", "--skip-compressors", "--data-dir", str(missing), "--out", str(tmp_path)])


def test_peer_checks_build_only_the_peers_trained() -> None:
    # Two head sizes (32 and 16): the reference cannot take them, so it is checked only when it is trained.
    config = MegabyteConfig.preset("tiny", dims=(64, 32), layers=(1, 1), heads=(2, 2), max_seq_len=32)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    checks = compare.check_peers(config, ids, seed=0, peers=("bytemodels", "gpt-bpe"))
    assert checks["causal"] and set(k for k in checks if k.startswith("untrained_")) == {"untrained_bytemodels"}
    assert "package_loss" not in checks
    with pytest.raises(ValueError, match="one head size"):
        compare.check_peers(config, ids, seed=0, peers=("bytemodels", "megabyte-pytorch"))


def test_peer_checks_pass_for_a_model_that_drops_ngram_rows_while_training() -> None:
    # The rows dropped are drawn anew on every call, so the causality check must compare the model in eval mode.
    config = MegabyteConfig.preset("tiny", dims=(32, 32), layers=(1, 1), heads=(2, 2), max_seq_len=32,
                                   hash_ngrams=(2, 3), hash_buckets=64, ngram_dropout=0.5)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    assert compare.check_peers(config, ids, seed=0, peers=("bytemodels",))["causal"]


def test_learning_rate_sweep_scores_each_peer_at_its_own_best_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    # The training itself needs the peer package; the sweep's bookkeeping is checked with a stand-in that
    # makes bytemodels best at the highest rate and the reference best at the middle one.
    bits = {"bytemodels": {1e-3: 1.3, 4e-3: 1.2, 1.6e-2: 1.1}, "megabyte-pytorch": {1e-3: 1.5, 4e-3: 1.4, 1.6e-2: 1.6}}
    plans = []

    def fake_train_peers(setup, plan, peers):
        plans.append(plan)
        return {"config": {}, "val_windows": 3, "checks": {},
                "peers": {peer: {"bits_per_byte": bits[peer][plan.lr], "steps": 5, "train_seconds": 1.0,
                                 "parameters": 10} for peer in peers}}

    monkeypatch.setattr(compare, "train_peers", fake_train_peers)
    plan = compare.TrainPlan(lr=2e-3, min_lr=2e-4)
    models = compare.sweep_peers(None, plan, [1e-3, 4e-3, 1.6e-2], list(bits))
    assert [(p.lr, p.min_lr) for p in plans] == [(1e-3, pytest.approx(1e-4)), (4e-3, pytest.approx(4e-4)),
                                                 (1.6e-2, pytest.approx(1.6e-3))]  # the floor keeps its ratio
    assert (models["peers"]["bytemodels"]["lr"], models["peers"]["bytemodels"]["bits_per_byte"]) == (1.6e-2, 1.1)
    assert (models["peers"]["megabyte-pytorch"]["lr"], models["peers"]["megabyte-pytorch"]["bits_per_byte"]) == (4e-3, 1.4)
    assert models["lr_sweep"]["0.004"] == {"bytemodels": 1.2, "megabyte-pytorch": 1.4}
    results = {"mnist": {"models": models}}
    table = compare.sweep_table(results)
    assert "| 0.016 | 1.1000 * | 1.6000 |" in table and "| 0.004 | 1.2000 | 1.4000 * |" in table
    target = compare.target_lines(results)[0]
    assert "each at its best learning rate: 0.016 and 0.004" in target and "21.4% lower" in target


def test_learning_rate_sweep_flag_refuses_bad_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.parse_args(["--lrs", "1e-3, 4e-3"]).lrs == [1e-3, 4e-3]
    for bad in ("fast", "1e-3,-2e-3", "1e-3,1e-3", "0"):
        with pytest.raises(SystemExit):
            compare.parse_args(["--lrs", bad])
        assert "--lrs" in capsys.readouterr().err


def verdict(line: str) -> bool:
    """Whether a target line says the target is met (its last words: "-> met" or "-> not met")."""
    assert line.endswith(("-> met", "-> not met")), line
    return line.endswith("-> met")


@pytest.mark.parametrize("ours", [1.1, 1.2, 1.21, 1.5])
def test_the_thirty_minute_text_target_is_checked_only_for_such_a_budget(ours) -> None:
    results = {"text": {"models": {"peers": {"bytemodels": {"bits_per_byte": ours}}}}}
    assert compare.target_lines(results) == [] and compare.target_lines(results, 300.0) == []
    [line] = compare.target_lines(results, 1800.0)
    assert f"bytemodels {ours:.3f} bits/byte" in line and verdict(line) == (ours <= 1.2)


@pytest.mark.parametrize("ours, reference, flat, png", [(1.0, 1.3, 1.1, 1.2), (1.0, 1.1, 0.9, 0.95),
                                                        (0.85, 1.0, 2.0, 0.8), (2.0, 1.0, 1.9, 3.0)])
def test_each_target_verdict_follows_from_the_numbers(ours, reference, flat, png) -> None:
    results = {"mnist": {"compressors": {"PNG (per image)": png, "gzip": 0.1},
                         "models": {"peers": {"bytemodels": {"bits_per_byte": ours},
                                              "megabyte-pytorch": {"bits_per_byte": reference},
                                              "flat": {"bits_per_byte": flat}}}}}
    against_reference, against_flat, against_png = compare.target_lines(results)
    assert verdict(against_reference) == (ours <= 0.85 * reference)  # at least 15% lower
    assert f"{abs(100 * (1 - ours / reference)):.1f}% {'lower' if ours <= reference else 'higher'}" \
        in against_reference
    assert verdict(against_flat) == (ours < flat)
    assert "PNG (per image)" in against_png and verdict(against_png) == (ours < png)  # gzip is no target


def test_compare_time_flag_reads_the_trainers_durations(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.parse_args(["--time", "1h30m"]).time == 5400
    assert compare.parse_args(["--time", "90"]).time == 90 and compare.parse_args(["--time", "1.5h"]).time == 5400
    with pytest.raises(SystemExit):
        compare.parse_args(["--time", "soon"])
    assert "--time 'soon': give seconds or a duration" in capsys.readouterr().err


def test_every_peer_decays_exactly_its_linear_weights() -> None:
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32)
    flat = compare.build_peer("flat", config, seed=0)
    plan = compare.TrainPlan()
    decay, rest = compare.build_optimizer(flat, plan.lr, weight_decay=plan.weight_decay).param_groups
    linear = {id(m.weight) for m in flat.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(rest["params"]) == len(list(flat.parameters())) and rest["weight_decay"] == 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compare_dtype_flag_trains_every_peer_under_the_asked_precision(dtype: str) -> None:
    plan = compare.train_plan(compare.parse_args(["--budget-steps", "2", "--warmup-steps", "1", "--dtype", dtype]))
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32)
    model = compare.build_peer("bytemodels", config, seed=0)
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.is_autocast_enabled("cpu")))

    class Windows:  # the one method and field train() reads
        seq_len = 32

        def batch(self, seed: int, step: int, batch_size: int):
            return torch.randint(0, 256, (batch_size, 32), generator=torch.Generator().manual_seed(step)).numpy()

    result = compare.train(model, Windows(), plan, "toy")
    assert result["steps"] == 2 and seen == [dtype == "bf16"] * 2
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())  # autocast, not a cast
    with pytest.raises(SystemExit):
        compare.parse_args(["--dtype", "fp16"])


@pytest.mark.parametrize("flags, expected", [
    # One step of warmup, then linear decay to zero at step 4 (a cosine would give 1e-3, 7.5e-4, 2.5e-4).
    (["--budget-steps", "4", "--schedule", "linear"], [5e-4, 1e-3, 2e-3 / 3, 1e-3 / 3]),
    # One step of warmup, the peak held to step 4, then linear decay to zero at step 8 over its last half (the
    # default fraction, 0.2, would hold the peak to step 6).
    (["--budget-steps", "8", "--schedule", "wsd", "--decay-fraction", "0.5"],
     [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4]),
])
def test_compare_schedule_flags_set_every_peers_learning_rate(flags: list[str], expected: list[float],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    plan = compare.train_plan(compare.parse_args(["--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "0", *flags]))
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32)
    model = compare.build_peer("bytemodels", config, seed=0)
    rates: list[float] = []
    rate_of_step = compare.learning_rate
    monkeypatch.setattr(compare, "learning_rate",
                        lambda step, **how: rates.append(rate_of_step(step, **how)) or rates[-1])

    class Windows:  # the one method and field train() reads
        seq_len = 32

        def batch(self, seed: int, step: int, batch_size: int):
            return torch.randint(0, 256, (batch_size, 32), generator=torch.Generator().manual_seed(step)).numpy()

    compare.train(model, Windows(), plan, "toy")
    assert rates == pytest.approx(expected)


def test_compare_schedule_flags_out_of_range_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(["--schedule", "step"])
    for bad in ("1.5", "-0.1"):
        with pytest.raises(SystemExit):
            compare.parse_args(["--decay-fraction", bad])
        assert f"--decay-fraction {bad}: give a fraction from 0 to 1" in capsys.readouterr().err


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])
def test_compare_grad_clip_flag_clips_every_peer_or_none(grad_clip: float, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = compare.train_plan(compare.parse_args(["--budget-steps", "2", "--warmup-steps", "1",
                                                  "--grad-clip", str(grad_clip)]))
    assert plan.grad_clip == grad_clip
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32)
    model = compare.build_peer("bytemodels", config, seed=0)
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda parameters, max_norm: norms.append(max_norm) or clip(parameters, max_norm))

    class Windows:  # the one method and field train() reads
        seq_len = 32

        def batch(self, seed: int, step: int, batch_size: int):
            return torch.randint(0, 256, (batch_size, 32), generator=torch.Generator().manual_seed(step)).numpy()

    compare.train(model, Windows(), plan, "toy")
    # 0 turns clipping off (clip_grad_norm_ with a norm of 0 would zero every gradient); a norm clips each step.
    assert norms == ([] if grad_clip == 0 else [grad_clip] * 2)
    with pytest.raises(SystemExit):
        compare.parse_args(["--grad-clip", "-1"])


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_smoke_mode_prints_the_table(tmp_path: Path) -> None:
    # The GPU check's CPU smoke mode runs every piece end to end (tiny preset, a few steps, a 3 s recipe run).
    stories = tmp_path / "stories"
    stories.mkdir()
    story = "Once upon a time, a little cat sat in the sun. It was happy.\n<|endoftext|>\n"
    (stories / "train.txt").write_text(story * 300, encoding="utf-8")
    (stories / "valid.txt").write_text(story * 30, encoding="utf-8")
    env = {**os.environ, "GPU_CHECK_DATA": str(stories), "GPU_CHECK_OUT": str(tmp_path / "out"),
           "GPU_CHECK_STORIES_TIME": "3s"}
    done = subprocess.run(["bash", str(GPU_CHECK), "--smoke"], cwd=GPU_CHECK.parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 5 and "failed" not in done.stdout  # the header and four measurements
    assert re.search(r"\| training, tiny preset .*\| [\d.]+ (B|KB|MB)/s, MFU n/a", done.stdout)
    assert re.search(r"\| cached generation after a 1 KiB prompt, eager \| [\d.]+ (B|KB|MB)/s", done.stdout)
    assert re.search(r"\| TinyStories, tiny preset, 3s \| \d\.\d{4} bits/byte", done.stdout)


def test_gpu_check_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out")}
    env.pop("GPU_CHECK_DEVICE", None)
    for args, code, message in (([], 1, "no CUDA GPU found"), (["--fast"], 2, "unknown argument --fast")):
        done = subprocess.run(["bash", str(GPU_CHECK), *args], cwd=GPU_CHECK.parents[1], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code and done.stdout == ""
        assert done.stderr.count("\n") == 1 and message in done.stderr


def test_validation_windows_scores_all_or_a_chosen_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = Megabyte(MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64))
    folder = save_checkpoint(tmp_path / "checkpoints", 1, write_model=model.save_pretrained, optimizer_state={},
                             rng_tensors={}, state={"bytes_seen": 0}, train_config={}, metadata={})
    story = b"Once upon a time a small dog found a red ball in the park. "
    cache = ByteDataset.build([(story * 20, 0)], tmp_path / "cache", key={"t": 1}, progress=False).path
    assert validation_windows.main([str(folder), str(cache), "--out", str(tmp_path / "all")]) == 0
    every = json.loads(next((tmp_path / "all").glob("*.json")).read_text())
    assert every["scored"] == every["windows"] > 3
    assert set(every["bits_per_byte"]) == {"all windows", "64 spread (the trainer)", "first 64"}
    assert validation_windows.main([str(folder), str(cache), "--windows", "3", "--out", str(tmp_path / "some")]) == 0
    sample = json.loads(next((tmp_path / "some").glob("*.json")).read_text())
    assert sample["scored"] == 3 and list(sample["bits_per_byte"]) == ["3 chosen as the trainer's sample"]
    # An untrained model scores about 8 bits per byte, whichever windows it reads.
    assert 6 < sample["bits_per_byte"]["3 chosen as the trainer's sample"] < 10
    assert "3 of " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        validation_windows.main([str(folder), str(cache), "--windows", "0"])
    capsys.readouterr()
    assert validation_windows.main([str(folder), str(cache), "--overlap", "0.5", "--out", str(tmp_path / "ov")]) == 0
    overlapped = json.loads(next((tmp_path / "ov").glob("*.json")).read_text())["bits_per_byte"]
    [row] = [name for name in overlapped if "overlapping" in name]
    assert row.endswith("overlapping, 32 apart") and 6 < overlapped[row] < 10
    assert f"| {row} |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        validation_windows.main([str(folder), str(cache), "--overlap", "1"])


@given(length=st.integers(1, 300), window=st.integers(1, 64), data=st.data())
@settings(max_examples=200, deadline=None)
def test_overlapping_windows_score_every_id_once_after_their_context(length: int, window: int, data) -> None:
    stride = data.draw(st.integers(1, window))
    starts, scored_from = compare.overlapping_windows(length, window, stride)
    scored = np.concatenate([np.arange(start + first, min(start + window, length))
                             for start, first in zip(starts, scored_from)])
    assert scored.tolist() == list(range(length))  # each id once, in order
    assert (starts >= 0).all() and (starts[1:] + window <= length).all()  # no later window runs past the end
    assert (scored_from[1:] >= window - stride).all()  # after the first window, that much context at least
    with pytest.raises(ValueError, match="need 1 <= stride <= window"):
        compare.overlapping_windows(length, window, window + 1)


def test_overlapped_byte_windows_score_every_held_out_byte_once(tmp_path: Path) -> None:
    documents = [(bytes(range(i, i + 50 + 7 * i)), None) for i in range(12)]
    dataset = ByteDataset.build(documents, tmp_path, key={"t": 1}, progress=False)
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)
    windows = dataset.windows(config.max_seq_len, config.patch_size, config.num_tags)
    overlapped = compare.overlapped_byte_windows(windows, 0.75, None)
    assert overlapped.stride == 16 and overlapped.stride % config.patch_size == 0
    model = Megabyte(config)
    whole = compare.evaluate(model, overlapped.ids, 4, config.patch_size, overlapped.scored_from)
    assert whole["scored_bytes"] == dataset.num_bytes
    plain = compare.evaluate(model, windows.fixed(len(windows)), 4, config.patch_size)
    assert plain["scored_bytes"] == dataset.num_bytes and plain["bits_per_byte"] != whole["bits_per_byte"]
    # A sample spread over the stream, as --eval-windows asks.
    assert len(compare.overlapped_byte_windows(windows, 0.75, 5).ids) == 5
    assert (compare.overlapped_byte_windows(windows, 0.75, 0).ids == overlapped.ids).all()  # --eval-windows 0: all
    records = ByteDataset.build(documents, tmp_path / "records", key={"t": 1}, layout="records", progress=False)
    with pytest.raises(ValueError, match="--eval-overlap needs packed windows"):
        compare.overlapped_byte_windows(records.windows(64, 8, config.num_tags), 0.5, None)
