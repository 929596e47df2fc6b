"""The Trainer end to end on CPU: budgets, logs, checkpoints, exact resume after SIGKILL, Ctrl-C, divergence."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bytemodels import checkpoint as ckpt
from bytemodels import train as train_module
from bytemodels.config import MegabyteConfig
from bytemodels.data import ByteDataset
from bytemodels.schedule import learning_rate
from bytemodels.train import Trainer, TrainConfig, TrainingDiverged, parse_duration

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> MegabyteConfig:
    return MegabyteConfig.preset("tiny", **{"dims": (32, 16), "layers": (1, 1), "heads": (2, 1), "max_seq_len": 32,
                                            **overrides})


def text_dataset(cache_dir: Path, layout: str = "packed") -> ByteDataset:
    rng = np.random.default_rng(0)
    words = [b"the", b"cat", b"sat", b"on", b"a", b"mat", b"and", b"dog", b"ran"]
    docs = [b" ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(3, 30)))) for _ in range(200)]
    return ByteDataset.build(docs, cache_dir, key={"test": "words"}, layout=layout, val_fraction=0.1, progress=False)


def train_config(out_dir: Path, **overrides) -> TrainConfig:
    values = dict(out_dir=str(out_dir), batch_size=4, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=3,
                  eval_every=10, eval_windows=8, checkpoint_every=10, log_every=5, progress=False)
    return TrainConfig(**{**values, **overrides})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ckpt.WEIGHTS_FILE))


def test_tiny_run_end_to_end(tmp_path):
    data = text_dataset(tmp_path / "cache")
    sampled = []

    def sample(model, step, folder):
        sampled.append(step)
        (folder / f"step_{step}.txt").write_bytes(model.generate(b"the", 8, seed=0))

    summary = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=30, sample_every=15), data.train,
                      data.val, sample_fn=sample, metadata={"codec": {"name": "text"}}).fit()
    run = tmp_path / "run"
    assert summary.step == 30 and summary.stop_reason == "max_steps"
    assert summary.bytes_seen == 30 * 4 * 32
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_bpb"] for r in records if "val_bpb" in r]
    train = [r for r in records if "bpb" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert len(val) == 4 and val[-1] < val[0] - 0.5  # step 0, 10, 20, 30: it learns
    assert summary.val_bpb == pytest.approx(val[-1], abs=1e-5)
    assert all(r["bpb"] == pytest.approx(r["loss"] / math.log(2), abs=1e-5) for r in train)
    assert (run / "curve.png").stat().st_size > 1000
    assert sampled == [15, 30] and (run / "samples" / "step_30.txt").is_file()  # the end does not sample step 30 twice
    assert [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [10, 20, 30]
    assert json.loads((run / "checkpoints" / "best" / "metadata.json").read_text()) == {"codec": {"name": "text"}}
    assert ckpt.load_checkpoint(run / "checkpoints" / "best").state["best_val_bpb"] == pytest.approx(min(val[1:]))


def test_wall_clock_budget_stops_the_run(tmp_path):
    data = text_dataset(tmp_path / "cache")
    summary = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=None, time="3s", eval_every=0),
                      data.train, data.val).fit()
    assert summary.stop_reason == "time" and summary.step > 0
    state = ckpt.load_checkpoint(tmp_path / "run").state
    # Training stopped with the end of the run (evaluation, checkpoint, curve) still to fit in the 3 s.
    assert 0 < state["elapsed_s"] < 3.0 and state["step"] == summary.step


class FakeClock:
    """``bytemodels.train._now`` for tests: time moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_trainer(monkeypatch, tmp_path, *, step_s, compiled_step_s=None, compile_s=0.0, eval_s=0.0,
                  checkpoint_s=0.0, sample_fn=None, **config) -> tuple[Trainer, FakeClock]:
    """A Trainer on a fake clock: each step, evaluation and checkpoint costs what the test says."""
    clock = FakeClock()
    monkeypatch.setattr(train_module, "_now", clock)
    real_step, real_eval, real_save = Trainer._forward_backward, Trainer.evaluate, Trainer.save_checkpoint
    compiled_steps = []

    def step(self, batch):
        if self.compiled:
            clock.now += compiled_step_s + (compile_s if not compiled_steps else 0.0)
            compiled_steps.append(self.step)
        else:
            clock.now += step_s
        return real_step(self, batch)

    def evaluate(self):
        clock.now += eval_s
        return real_eval(self)

    def save(self, best=False):
        clock.now += checkpoint_s
        return real_save(self, best)

    monkeypatch.setattr(Trainer, "_forward_backward", step)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    data = text_dataset(tmp_path / "cache")
    return Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=None, **config), data.train,
                   data.val, sample_fn=sample_fn), clock


def test_the_time_budget_leaves_room_for_the_final_evaluation_and_checkpoint(tmp_path, monkeypatch):
    # Steps of 1 s, evaluations of 5 s, checkpoints of 0.5 s, a 30 s budget: the final evaluation and checkpoint
    # end within it (the old trainer trained until 30 s, then evaluated past it).
    trainer, clock = timed_trainer(monkeypatch, tmp_path, step_s=1.0, eval_s=5.0, checkpoint_s=0.5, time="30s",
                                   eval_every=10, checkpoint_every=10, progress=True)
    summary = trainer.fit()
    assert summary.stop_reason == "time" and summary.val_bpb is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 10, summary.step]
    # 0: eval (5 s); steps 1-10 (10 s); eval and checkpoint at 10 (5.5 s); steps 11-13 (3 s): 23.5 s, and the
    # end's 5 s evaluation, 0.5 s checkpoint and 1 s margin would pass 30 s after a 14th step.
    assert summary.step == 13 and clock.now == pytest.approx(29.0)
    # The bar ran over the budget's seconds, its total never changed.
    assert trainer._log.bar.total == 30 and trainer._log.bar.unit == "s" and trainer._log.bar.n == 29


def test_the_time_budget_times_the_sample_function_before_it_needs_its_room(tmp_path, monkeypatch):
    # A sample function whose first call takes 8 s (it compiles its decoding step) and later ones 1 s: it is
    # called (and timed) at the start, so the end's samples fit in the budget however slow the first call was.
    calls = []

    def sample(model, step, folder):
        clock.now += 8.0 if not calls else 1.0
        calls.append(step)

    trainer, clock = timed_trainer(monkeypatch, tmp_path, step_s=1.0, eval_s=2.0, sample_fn=sample, time="30s",
                                   eval_every=0)
    summary = trainer.fit()
    assert calls == [0, summary.step] and summary.step > 5 and clock.now <= 30.0


def test_compiling_waits_for_measured_steps_and_happens_when_it_pays(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # compiling costs the fake clock's time only
    monkeypatch.setattr(Trainer, "_compile_estimate", lambda self: (3.0, 2.0, "measured on this machine before"))
    trainer, clock = timed_trainer(monkeypatch, tmp_path, step_s=1.0, compiled_step_s=0.5, compile_s=3.0,
                                   time="60s", eval_every=0, compile=True)
    assert not trainer.compiled  # the first steps run eagerly and are timed
    summary = trainer.fit()
    out = capsys.readouterr().out
    assert trainer.compiled and "compile: yes" in out and "compiling about 3 s, then 2x faster" in out
    assert summary.stop_reason == "time" and clock.now <= 60
    # What compiling cost and gained, measured, is what the next run on this machine decides from.
    record = json.loads(train_module.compile_record_path().read_text())
    assert list(record.values())[0]["compile_s"] == 3.0 and list(record.values())[0]["speedup"] == 2.0
    monkeypatch.undo()
    data = text_dataset(tmp_path / "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    again = Trainer(tiny_config(), train_config(tmp_path / "again", compile=True), data.train, data.val)
    assert again._compile_estimate() == (3.0, 2.0, "measured on this machine before")


def test_a_budget_too_short_for_compiling_trains_uncompiled_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))  # nothing measured: the safe guess
    trainer, clock = timed_trainer(monkeypatch, tmp_path, step_s=1.0, time="60s", eval_every=0, compile=True)
    trainer.fit()
    out = capsys.readouterr().out
    assert not trainer.compiled and not train_module.compile_record_path().exists()
    assert "compile: no: 0 steps compiled against" in out and "a safe guess, never measured here" in out


def test_a_cpu_run_keeps_freed_memory_for_its_next_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(True) or True)
    data = text_dataset(tmp_path / "cache")
    Trainer(tiny_config(), train_config(tmp_path / "run", device="cpu"), data.train, data.val)
    assert calls == [True]


def test_a_run_that_ends_during_warmup_is_no_result(tmp_path):
    from bytemodels.app.recipe import no_result_line

    data = text_dataset(tmp_path / "cache")
    summary = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=2, warmup_steps=3),
                      data.train, data.val).fit()
    assert summary.no_result == "the run ended after 2 steps, during warmup (3 steps)"
    assert no_result_line(summary) == (f"the run ended after 2 steps, during warmup (3 steps): its validation "
                                       f"bits/byte ({summary.val_bpb:.2f}) is no result; give it more --max-steps")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_bpb"] == pytest.approx(summary.val_bpb, abs=1e-5)  # the number stays in the log
    longer = Trainer(tiny_config(), train_config(tmp_path / "run2", max_steps=10, warmup_steps=3), data.train,
                     data.val).fit()
    assert longer.no_result is None and no_result_line(longer) is None


def test_max_bytes_budget(tmp_path):
    data = text_dataset(tmp_path / "cache")
    summary = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=None, max_bytes=1000, eval_every=0),
                      data.train, data.val).fit()
    assert summary.stop_reason == "max_bytes" and summary.step == 8  # ceil(1000 / (4 x 32))


def test_a_failed_compile_warns_and_trains_uncompiled(tmp_path, monkeypatch, capsys):
    # As on a machine without a C++ compiler: the backend raises when the first step compiles.
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    monkeypatch.setattr(Trainer, "_compile_estimate", lambda self: (0.0, 10.0, "measured on this machine before"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    data = text_dataset(tmp_path / "cache")
    trainer = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=6, eval_every=0, compile=True),
                      data.train, data.val)
    with pytest.warns(RuntimeWarning, match="torch.compile failed, training continues uncompiled.*no C\\+\\+"):
        summary = trainer.fit()
    assert summary.step == 6 and not trainer.compiled and trainer.train_model is trainer.model
    assert "compile: yes" in capsys.readouterr().out  # it was decided, then failed
    assert not train_module.compile_record_path().exists()  # a failed compile measured nothing
    assert math.isfinite(summary.val_bpb)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = text_dataset(tmp_path / "cache")

    def poison(model, step, folder):  # stands in for a blow-up right after step 5
        if step == 5:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))

    trainer = Trainer(tiny_config(), train_config(tmp_path / "run", checkpoint_every=4, sample_every=5,
                                                  eval_every=0), data.train, data.val, sample_fn=poison)
    with pytest.raises(TrainingDiverged, match=r"not finite at step 5.*step_000004"):
        trainer.fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [4]
    good = weights(tmp_path / "run" / "checkpoints" / "step_000004")
    assert all(torch.isfinite(t).all() for t in good.values())


def test_ctrl_c_saves_and_returns(tmp_path):
    data = text_dataset(tmp_path / "cache")

    def press_ctrl_c(model, step, folder):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    # The handler before fit() is what fit() must leave: Python's default, or SIG_IGN where the suite itself runs
    # in the background (a shell starts background jobs with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    summary = Trainer(tiny_config(), train_config(tmp_path / "run", sample_every=1), data.train, data.val,
                      sample_fn=press_ctrl_c).fit()
    assert summary.stop_reason == "interrupted" and summary.step == 3 and summary.stop_signal == signal.SIGINT
    assert summary.checkpoint.name == "step_000003" and ckpt.load_checkpoint(summary.checkpoint).step == 3
    assert signal.getsignal(signal.SIGINT) is before


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # Records leave PAD in the windows: the loss must weigh every target the same across micro-batches.
    data = text_dataset(tmp_path / "cache", layout="records")
    results = []
    for name, batch, accum in (("big", 8, 1), ("accumulated", 2, 4)):
        # fp32: under bf16 (the auto choice on CPUs with bf16 matrix instructions) the splits round differently
        config = train_config(tmp_path / name, batch_size=batch, grad_accum=accum, max_steps=4, eval_every=0,
                              dtype="fp32")
        Trainer(tiny_config(), config, data.train, data.val).fit()
        results.append(weights(ckpt.latest_checkpoint(tmp_path / name)))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)


def test_resume_continues_with_recorded_configs_and_checks_the_model(tmp_path):
    data = text_dataset(tmp_path / "cache")
    straight = Trainer(tiny_config(), train_config(tmp_path / "straight", max_steps=12, schedule="constant",
                                                   warmup_steps=0), data.train, data.val).fit()
    Trainer(tiny_config(), train_config(tmp_path / "halves", max_steps=6, schedule="constant", warmup_steps=0),
            data.train, data.val).fit()
    resumed = Trainer.resume(tmp_path / "halves", data.train, data.val, max_steps=12).fit()
    assert resumed.step == 12
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="different model config.*dims"):
        Trainer(tiny_config(dims=(64, 16)), train_config(tmp_path / "x"), data.train, resume=tmp_path / "halves")


@pytest.mark.parametrize("optimizer", ["muon", "normuon"])
def test_a_muon_run_resumes_exactly_and_only_with_muon(tmp_path, optimizer):
    data = text_dataset(tmp_path / "cache")
    settings = dict(optimizer=optimizer, schedule="constant", warmup_steps=0)
    straight = Trainer(tiny_config(), train_config(tmp_path / "straight", max_steps=12, **settings),
                       data.train, data.val).fit()
    Trainer(tiny_config(), train_config(tmp_path / "halves", max_steps=6, **settings), data.train, data.val).fit()
    resumed = Trainer.resume(tmp_path / "halves", data.train, data.val, max_steps=12).fit()
    assert resumed.step == 12 and json.loads((resumed.checkpoint / ckpt.TRAIN_CONFIG_FILE).read_text())[
        "optimizer"] == optimizer
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)  # Muon's momentum (NorMuon's row RMS) came back
    adamw_run = weights(Trainer(tiny_config(), train_config(tmp_path / "adamw", max_steps=12, schedule="constant",
                                                            warmup_steps=0), data.train, data.val).fit().checkpoint)
    assert not torch.equal(adamw_run["stages.1.transformer.blocks.0.mlp.up.weight"],
                           a["stages.1.transformer.blocks.0.mlp.up.weight"])
    with pytest.raises(ValueError, match=f"trained with optimizer='{optimizer}', not 'adamw'; resume with "
                                         f"optimizer='{optimizer}'"):
        Trainer.resume(tmp_path / "halves", data.train, data.val, max_steps=12, optimizer="adamw")


def test_resume_from_a_corrupted_checkpoint_names_it_and_the_previous_survives(tmp_path):
    data = text_dataset(tmp_path / "cache")
    Trainer(tiny_config(), train_config(tmp_path / "run", checkpoint_every=5, eval_every=0, max_steps=10),
            data.train, data.val).fit()
    newest = tmp_path / "run" / "checkpoints" / "step_000010"
    (newest / ckpt.OPTIMIZER_FILE).write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"step_000010/optimizer\.pt.*step_000005 is intact"):
        Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=12), data.train, resume="auto")
    trainer = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=12), data.train,
                      resume=tmp_path / "run" / "checkpoints" / "step_000005")
    assert trainer.step == 5


KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from bytemodels.config import MegabyteConfig
    from bytemodels.data import ByteDataset
    from bytemodels.train import Trainer, TrainConfig

    cache, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rng = np.random.default_rng(0)
    docs = [bytes(rng.integers(97, 123, int(rng.integers(5, 60))).astype(np.uint8)) for _ in range(100)]
    data = ByteDataset.build(docs, cache, key={"kill": 1}, val_fraction=0.1, progress=False)
    # With n-gram tables: their rows' optimizer state (updated by rows) must come back exactly too.
    model = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32, dropout=0.1,
                                  hash_ngrams=(2, 3), hash_buckets=64)
    train = TrainConfig(out_dir=out, batch_size=2, grad_accum=2, max_steps=24, lr=3e-3, warmup_steps=3,
                        eval_every=6, eval_windows=4, checkpoint_every=4, keep_last=2, sample_every=1,
                        log_every=2, progress=False)
    summary = Trainer(model, train, data.train, data.val, sample_fn=lambda m, s, d: time.sleep(pause),
                      resume="auto").fit()
    print(json.dumps({"step": summary.step, "val_bpb": summary.val_bpb}))
""")


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def launch(out: str, pause: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(tmp_path / out),
                                 str(pause)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    straight = launch("straight", 0.0)
    victim = launch("killed", 0.08)  # slowed down so the kill lands mid-run
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_000008").exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the run never wrote its second checkpoint"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))  # an arbitrary moment, possibly mid-checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = max(step for step, _ in ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints"))
    assert killed_at < 24, "the run finished before it was killed"

    resumed = launch("killed", 0.0)
    out_resumed, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    out_straight, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err
    assert json.loads(out_resumed.splitlines()[-1]) == json.loads(out_straight.splitlines()[-1])
    a = weights(tmp_path / "straight" / "checkpoints" / "step_000024")
    b = weights(tmp_path / "killed" / "checkpoints" / "step_000024")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The resumed run's metrics have no duplicate lines from the killed run.
    records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], "val_bpb" in r) for r in records]
    assert len(keys) == len(set(keys))


def test_schedules_are_pure_functions_of_the_step():
    common = dict(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100)
    warmup = [learning_rate(s, **common) for s in range(10)]
    assert warmup == sorted(warmup) and warmup[-1] < 1.0
    assert learning_rate(10, **common) == pytest.approx(1.0)
    assert learning_rate(100, **common) == pytest.approx(0.1) and learning_rate(55, **common) == pytest.approx(0.55)
    wsd = dict(common, schedule="wsd", decay_fraction=0.2)
    assert learning_rate(79, **wsd) == 1.0 and learning_rate(90, **wsd) == pytest.approx(0.55)
    assert learning_rate(500, **common, schedule="constant") == 1.0
    assert learning_rate(50, **{**common, "total_steps": None}) == 1.0  # horizon not known yet
    linear = dict(common, schedule="linear")
    assert learning_rate(55, **linear) == pytest.approx(0.55) and learning_rate(99, **linear) < 0.12
    assert learning_rate(55, **{**linear, "min_lr": 0.0}) == pytest.approx(0.5)  # decay to zero
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, **common, schedule="step")


def test_train_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_steps, max_bytes or time"):
        TrainConfig().validate()
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(max_steps=1, schedule="step")
    with pytest.raises(ValueError, match="optimizer='sgd'; choose one of: adamw, muon, normuon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="time='soon'"):
        TrainConfig(time="soon")
    with pytest.raises(ValueError, match="lr=nan must be a finite number"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match=r"betas=\(1.5, 0.9\) must be two numbers in \[0, 1\)"):
        TrainConfig(betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="time='0s' must be longer than 0"):
        TrainConfig(time="0s")
    with pytest.raises(ValueError, match="seed=-1 must be in"):
        TrainConfig(seed=-1)
    with pytest.raises(ValueError, match="seed=18446744073709551616 must be in"):
        TrainConfig(seed=2**64)
    for budget in ("max_steps", "max_bytes"):  # 0 is no budget at all, not "no limit" (that is None)
        for value in (0, -1):
            with pytest.raises(ValueError, match=f"{budget}={value} must be at least 1"):
                TrainConfig(**{budget: value})
    with pytest.raises(ValueError, match="unknown TrainConfig field.*epochs"):
        TrainConfig.from_dict({"epochs": 3})
    config = TrainConfig(max_steps=5, betas=[0.8, 0.9])
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400


def test_resuming_with_another_global_batch_warns_and_says_how_to_keep_it(tmp_path):
    data = text_dataset(tmp_path / "cache")
    Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=2, checkpoint_every=2), data.train, data.val).fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    expected = (r"global batch changed from 4 to 2 \(batch_size x grad_accum x processes\); "
                r"to keep it with 1 process\(es\), set grad_accum=2 \(batch_size 2\)")
    with pytest.warns(RuntimeWarning, match=expected):
        Trainer.resume(checkpoint, data.train, data.val, batch_size=2, max_steps=3)


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False), (None, None)])
def test_auto_dtype_trains_in_bf16_on_cpus_with_bf16_matrix_instructions_and_in_fp32_on_others(
        tmp_path, monkeypatch, amx, avx512_bf16):
    from bytemodels.distributed import bf16_is_fast

    for probe, present in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if present is None:  # a PyTorch without the private probe: bf16 is not assumed to be fast
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda present=present: present, raising=False)
    fast = bool(amx or avx512_bf16)
    assert bf16_is_fast(torch.device("cpu")) is fast
    assert bf16_is_fast(torch.device("cuda")) and not bf16_is_fast(torch.device("mps"))
    data = text_dataset(tmp_path / "cache")
    trainer = Trainer(tiny_config(), train_config(tmp_path / "run", max_steps=2, device="cpu"), data.train, data.val)
    assert trainer.precision == ("bf16 autocast" if fast else "fp32")
    forced = Trainer(tiny_config(), train_config(tmp_path / "forced", max_steps=2, device="cpu", dtype="fp32"),
                     data.train, data.val)
    assert forced.precision == "fp32"
    summary = trainer.fit()
    assert summary.step == 2 and math.isfinite(summary.val_bpb)


def test_one_slow_compile_measurement_is_measured_again_not_believed(tmp_path, monkeypatch):
    # A run beside a busy neighbour measured its compiled steps slower than uncompiled (0.87x). Believed, that
    # record would keep every later run of the shape from compiling, and so from ever measuring again.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    data = text_dataset(tmp_path / "cache")
    trainer = Trainer(tiny_config(), train_config(tmp_path / "run", compile=True), data.train, data.val)
    trainer._save_compile_record(95.0, 0.87)
    compile_s, speedup, source = trainer._compile_estimate()
    assert (compile_s, speedup) == (train_module.DEFAULT_COMPILE_S["cpu"], train_module.DEFAULT_SPEEDUP)
    assert source == "a safe guess: measured 0.87x once here, measuring again"
    # The next measurement is kept where it is better; two measurements are believed, the best of them.
    trainer._save_compile_record(60.0, 1.6)
    record = json.loads(train_module.compile_record_path().read_text())[trainer._compile_key()]
    assert record["measurements"] == 2 and record["speedup"] == 1.6
    assert trainer._compile_estimate() == (60.0, 1.6, "measured on this machine before")
    trainer._save_compile_record(70.0, 1.1)  # a slower third measurement does not lower the best
    assert trainer._compile_estimate() == (70.0, 1.6, "measured on this machine before")
    # A slow speedup confirmed by a second run is believed: compiling does not pay for that shape here.
    other = Trainer(tiny_config(), train_config(tmp_path / "run2", compile=True, batch_size=2), data.train, data.val)
    other._save_compile_record(90.0, 0.9)
    other._save_compile_record(90.0, 0.95)
    assert other._compile_estimate() == (90.0, 0.95, "measured on this machine before")
