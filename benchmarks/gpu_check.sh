#!/usr/bin/env bash
# The GPU check: one script, about 7-8 minutes on one H100/H200, that prints the Markdown table of the
# "GPU" section of docs/benchmarks.md:
#   1. training bytes/s and MFU of the base preset at max_seq_len 8192, bf16 autocast + torch.compile
#      (random bytes, batch 16 x 8192, the median of the logged intervals after the compile's warm-up);
#   2. cached generation bytes/s after a 1 KiB prompt, compiled decoding steps and eager (random weights, batch 1);
#   3. python -m recipes.tinystories --preset base --time 5m --eval-every 0 and its final validation bits/byte.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a CUDA machine
#   bash benchmarks/gpu_check.sh --smoke    # on CPU: tiny preset, a few steps, a 20 s run (proves the script)
#
# Environment: GPU_CHECK_DEVICE=cpu is the same as --smoke; GPU_CHECK_DATA is the TinyStories folder
# (default ../shared/data/tinystories, else shared/data/tinystories); GPU_CHECK_STORIES_TIME the recipe's
# --time (default 5m, 20s in smoke mode); GPU_CHECK_OUT the output folder (default outputs/gpu_check). Every piece runs under `timeout`; one that fails or runs out of time
# shows "failed" in its row, the table is still printed, and the script exits 1. Logs and JSON results go to
# outputs/gpu_check/ (ignored by git).
set -euo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=1
elif [[ $# -gt 0 ]]; then
    echo "gpu_check.sh: unknown argument $1 (the only flag is --smoke)" >&2
    exit 2
fi
if [[ "${GPU_CHECK_DEVICE:-cuda}" == "cpu" ]]; then
    smoke=1
fi

if [[ ! -f bytemodels/__init__.py ]]; then
    echo "gpu_check.sh: run it from the repository root (bash benchmarks/gpu_check.sh)" >&2
    exit 2
fi
if [[ $smoke -eq 0 ]] && ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA GPU found (torch.cuda.is_available() is False); on CPU use --smoke" >&2
    exit 1
fi

out="${GPU_CHECK_OUT:-outputs/gpu_check}"
mkdir -p "$out"
# Only what this script writes goes (the byte caches stay: they are keyed by their content).
rm -rf "$out/train-run" "$out/tinystories" "$out"/train.json "$out"/generate.json "$out"/*.log

data="${GPU_CHECK_DATA:-}"
if [[ -z "$data" ]]; then
    data=../shared/data/tinystories
    [[ -d "$data" ]] || data=shared/data/tinystories
fi

if [[ $smoke -eq 1 ]]; then
    export GPU_CHECK_DEVICE=cpu GPU_CHECK_PRESET=tiny GPU_CHECK_SEQ_LEN=256 GPU_CHECK_BATCH=2 GPU_CHECK_STEPS=6
    export GPU_CHECK_COMPILE=0 GPU_CHECK_NEW_BYTES=16 GPU_CHECK_DTYPE=fp32  # bf16 autocast is slow on CPU
    stories_time="${GPU_CHECK_STORIES_TIME:-20s}"
    stories_flags=(--preset tiny --device cpu --no-compile --max-seq-len 256 --batch-size 2 --eval-every 0
                   --eval-windows 4 --sample-bytes 32 --no-progress)
    train_limit=120 generate_limit=120 stories_limit=180
else
    export GPU_CHECK_DEVICE=cuda GPU_CHECK_PRESET=base GPU_CHECK_SEQ_LEN=8192 GPU_CHECK_BATCH=16 GPU_CHECK_STEPS=60
    export GPU_CHECK_COMPILE=1 GPU_CHECK_NEW_BYTES=512 GPU_CHECK_DTYPE=bf16
    stories_time="${GPU_CHECK_STORIES_TIME:-5m}"
    # Evaluation (and its printed stories) only at the end: the time goes to training.
    stories_flags=(--preset base --eval-every 0 --no-progress)
    # Compiling takes most of the first two; the third is 5 minutes of training plus start-up, caching and the
    # final evaluation. Together at most 9.5 minutes; about 7 to 8 when compiling is quick.
    train_limit=110 generate_limit=80 stories_limit=380
fi
export GPU_CHECK_OUT="$out"
failed=0

# -- 1. training throughput and MFU -------------------------------------------------------------------------
echo "gpu_check: 1/3 training throughput (log: $out/train.log)" >&2
timeout -k 10 "$train_limit" python - >"$out/train.log" 2>&1 <<'PY' || { failed=1; echo "gpu_check: training failed or timed out, see $out/train.log" >&2; }
import json, os, statistics
from pathlib import Path

import numpy as np

from bytemodels import MegabyteConfig
from bytemodels.data import ByteDataset
from bytemodels.train import Trainer, TrainConfig

env = os.environ
out = Path(env["GPU_CHECK_OUT"])
seq_len, batch, steps = int(env["GPU_CHECK_SEQ_LEN"]), int(env["GPU_CHECK_BATCH"]), int(env["GPU_CHECK_STEPS"])
config = MegabyteConfig.preset(env["GPU_CHECK_PRESET"], max_seq_len=seq_len)
rng = np.random.default_rng(0)
documents = [rng.integers(0, 256, 1 << 20, dtype=np.uint8) for _ in range(4)]  # 4 MiB: throughput, not learning
data = ByteDataset.build(documents, out / "cache", key={"gpu_check": "random", "mib": 4}, progress=False)
train_config = TrainConfig(out_dir=str(out / "train-run"), batch_size=batch, max_steps=steps, warmup_steps=5,
                           eval_every=0, checkpoint_every=10**6, log_every=max(steps // 12, 1), progress=False,
                           device=env["GPU_CHECK_DEVICE"], dtype=env["GPU_CHECK_DTYPE"],
                           compile=env["GPU_CHECK_COMPILE"] == "1")
trainer = Trainer(config, train_config, data)
trainer.fit()
records = [json.loads(line) for line in (out / "train-run" / "metrics.jsonl").read_text().splitlines()]
records = [r for r in records if "bytes_per_s" in r]
timed = records[len(records) // 2:]  # the first half holds the compile's warm-up
mfu = [r["mfu"] for r in timed if "mfu" in r]
result = {"bytes_per_s": statistics.median(r["bytes_per_s"] for r in timed),
          "mfu": statistics.median(mfu) if mfu else None, "compiled": trainer.compiled,
          "parameters": trainer.model.num_parameters(), "batch": batch, "seq_len": seq_len, "steps": steps}
(out / "train.json").write_text(json.dumps(result))
print(result)
PY

# -- 2. cached generation, compiled and eager ---------------------------------------------------------------
echo "gpu_check: 2/3 generation speed (log: $out/generate.log)" >&2
timeout -k 10 "$generate_limit" python - >"$out/generate.log" 2>&1 <<'PY' || { failed=1; echo "gpu_check: generation failed or timed out, see $out/generate.log" >&2; }
import json, os, time
from pathlib import Path

import torch

from bytemodels import Megabyte, MegabyteConfig

env = os.environ
device = torch.device(env["GPU_CHECK_DEVICE"])
new_bytes = int(env["GPU_CHECK_NEW_BYTES"])
config = MegabyteConfig.preset(env["GPU_CHECK_PRESET"], max_seq_len=int(env["GPU_CHECK_SEQ_LEN"]))
torch.manual_seed(0)
model = Megabyte(config).to(device).eval()
prompt = bytes(torch.randint(0, 256, (1024,), generator=torch.Generator().manual_seed(0)).tolist())
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=env["GPU_CHECK_DTYPE"] == "bf16")


def rate(compile: bool) -> float:
    """Bytes/s of one whole call (the prompt's processing included) after two warm-up calls."""
    with autocast:
        model.generate(prompt[:64], 8, seed=0, compile=compile)  # a compiled step compiles for a first size,
        model.generate(prompt, 8, seed=0, compile=compile)       # then once more for any size
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        produced = len(model.generate(prompt, new_bytes, seed=0, compile=compile))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return produced / (time.perf_counter() - start)


result = {"eager": rate(False), "new_bytes": new_bytes}
result["compiled"] = rate(True) if env["GPU_CHECK_COMPILE"] == "1" else None
(Path(env["GPU_CHECK_OUT"]) / "generate.json").write_text(json.dumps(result))
print(result)
PY

# -- 3. TinyStories, base preset, 5 minutes -----------------------------------------------------------------
echo "gpu_check: 3/3 TinyStories run of $stories_time (log: $out/tinystories.log)" >&2
if [[ ! -d "$data" ]]; then
    failed=1
    echo "gpu_check: TinyStories data folder $data not found (set GPU_CHECK_DATA)" >&2
else
    timeout -k 20 "$stories_limit" python -m recipes.tinystories --data "$data" --time "$stories_time" \
        --out "$out/tinystories" --cache-dir "$out/cache" "${stories_flags[@]}" >"$out/tinystories.log" 2>&1 \
        || { failed=1; echo "gpu_check: the TinyStories run failed or timed out, see $out/tinystories.log" >&2; }
fi

# -- the table ------------------------------------------------------------------------------------------------
GPU_CHECK_STORIES_TIME="$stories_time" GPU_CHECK_SMOKE="$smoke" python - <<'PY'
import datetime, json, os
from pathlib import Path

import torch

env = os.environ
out = Path(env["GPU_CHECK_OUT"])


def load(name: str) -> dict | None:
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None


def rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} MB/s"
    return f"{value / 1e3:.1f} KB/s" if value >= 1e3 else f"{value:.0f} B/s"


device = torch.device(env["GPU_CHECK_DEVICE"])
machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke mode)"
preset, seq_len = env["GPU_CHECK_PRESET"], int(env["GPU_CHECK_SEQ_LEN"])
train, generate = load("train.json"), load("generate.json")
val_bpb = None
metrics = out / "tinystories" / "metrics.jsonl"
if metrics.is_file():
    values = [json.loads(line).get("val_bpb") for line in metrics.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    val_bpb = values[-1] if values else None

rows = []
if train:
    mfu = "n/a (no known peak)" if train["mfu"] is None else f"{train['mfu']:.1%}"
    how = f"{env['GPU_CHECK_DTYPE']}, " + ("compiled" if train["compiled"] else "uncompiled")
    rows.append((f"training, {preset} preset ({train['parameters'] / 1e6:.1f} M), {seq_len} B context, {how}",
                 f"{rate(train['bytes_per_s'])}, MFU {mfu}",
                 f"random bytes, batch {train['batch']} x {seq_len}, median after the warm-up of {train['steps']} steps"))
else:
    rows.append((f"training, {preset} preset, {seq_len} B context", "failed", "see train.log"))
for kind in ("compiled", "eager"):
    value = generate.get(kind) if generate else None
    shown = rate(value) if value else ("not run (smoke mode)" if generate and kind == "compiled" else "failed")
    rows.append((f"cached generation after a 1 KiB prompt, {kind}", shown,
                 f"{preset} preset, random weights, batch 1, {generate['new_bytes'] if generate else '?'} new bytes"))
rows.append((f"TinyStories, {preset} preset, {env['GPU_CHECK_STORIES_TIME']}",
             "failed" if val_bpb is None else f"{val_bpb:.4f} bits/byte",
             "final validation bits/byte of python -m recipes.tinystories"))

print(f"GPU check on {machine}, torch {torch.__version__}, "
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (bash benchmarks/gpu_check.sh"
      f"{' --smoke' if env['GPU_CHECK_SMOKE'] == '1' else ''})")
print()
print("| measurement | result | setting |")
print("|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
PY

exit "$failed"
