"""The random number generators a training run must restore to resume exactly: capture and restore.

torch's states (CPU, and each CUDA device once CUDA is in use) are uint8 tensors, stored in a checkpoint's
``rng.safetensors``; numpy's and Python's are stored as JSON in its ``state.json``. ``step_seed`` gives the
seed a step reseeds dropout with, so the noise of step ``s`` does not depend on where a run was resumed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: ``(tensors, json_state)``, as ``restore`` takes them back."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"torch_cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    json_state = {"numpy": {"kind": kind, "keys": keys.tolist(), "position": int(position),
                            "has_gauss": int(has_gauss), "gauss": float(gauss)},
                  "python": [version, list(internal), python_gauss]}
    return tensors, json_state


def restore(tensors: dict[str, torch.Tensor], json_state: dict[str, Any]) -> None:
    """Set every generator to what ``capture`` returned (CUDA states only on a machine with as many devices)."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[key] for key in sorted(tensors) if key.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = json_state["numpy"]
    np.random.set_state((numpy_state["kind"], np.array(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["gauss"]))
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of optimizer step ``step`` on process ``rank`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, step, rank, 0xD80]).generate_state(1, dtype=np.uint64)[0] >> 1)
