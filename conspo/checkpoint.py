"""Atomic checkpoints: safetensors tensors plus JSON, never pickles.

A checkpoint is a directory ``checkpoint-<step>/`` holding

* ``model.safetensors``      the policy weights (``safetensors.torch.save_model``: tied weights ok);
                             for a LoRA run ``adapter.safetensors`` (the adapter only) instead
* ``optimizer.safetensors``  every tensor of the optimizer state, keys ``state.<param>.<name>``
* ``state.json``             step, optimizer param groups and scalar state, Python RNG state,
                             and anything else the trainer passes as ``extra``
* ``rng.safetensors``        torch CPU (and CUDA) generator states

It is written into a hidden temporary directory, flushed, then renamed into place, so a
``checkpoint-<step>`` directory that exists is complete: a crash mid-write leaves only a
``.tmp-*`` directory, which is ignored and cleaned up by the next save.

``save_optimizer_file`` / ``save_rng_file`` and their loaders are the same contents as single
self-describing files (JSON in the safetensors header): ``--engine trl`` writes them in place
of the pickles of transformers' Trainer (conspo/integrations/trl_engine.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from conspo.models import is_lora

PREFIX = "checkpoint-"
ADAPTER_FILE = "adapter.safetensors"  # LoRA runs: the adapter's weights instead of model.safetensors


def before_publish(tmp_dir: Path, step: int) -> None:
    """Called with every file of a checkpoint written, just before the rename makes it visible.

    Does nothing; a seam that tests replace to crash at the worst moment (tests/faults).
    """


def fsync_file(path: Path) -> None:
    """Flush a written file to disk (safetensors and transformers do not)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    """Write JSON and flush it to disk before returning (a marker others rely on must not be lost)."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as (tensors keyed ``state.<param>.<name>``, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state.{param_id}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The inverse of ``optimizer_state_tensors``."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for key, value in meta["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run_dir: Path, step: int, model, optimizer, py_rng: random.Random, extra: dict, keep: int = 2
) -> Path:
    """Write ``run_dir/checkpoint-<step>`` atomically; keep the newest ``keep`` checkpoints."""
    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step}"
    tmp = run_dir / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_checkpoint_files(tmp, step, model, optimizer, py_rng, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. disk full: leave no partial directory behind
        raise
    before_publish(tmp, step)
    if final.exists():  # re-saving a step (e.g. after resuming onto it): replace whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(run_dir)
    rotate_checkpoints(run_dir, keep)
    return final


def rotate_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints of a run (0: all) and delete what an interrupted save left
    behind: a ``checkpoint-<step>`` without its ``state.json`` (written last, so it is never resumed from) and
    a ``.tmp-checkpoint-*`` being written when the process died. Both engines call it after each save."""
    run_dir = Path(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for path in run_dir.glob(f"{PREFIX}*"):
        if path.is_dir() and path.name[len(PREFIX) :].isdigit() and not (path / "state.json").exists():
            shutil.rmtree(path, ignore_errors=True)
    for stale in run_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_checkpoint_files(tmp: Path, step: int, model, optimizer, py_rng: random.Random, extra: dict) -> None:
    if is_lora(model):  # the base weights never change: keep only the adapter
        from peft import get_peft_model_state_dict

        adapter = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, str(tmp / ADAPTER_FILE))
    else:
        save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_state_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file(torch_rng_tensors(), str(tmp / "rng.safetensors"))
    version, internal, gauss = py_rng.getstate()
    write_json(
        tmp / "state.json",
        {
            "step": step,
            "optimizer": opt_meta,
            "python_rng": [version, list(internal), gauss],
            **extra,
        },
    )
    for f in tmp.iterdir():  # before the rename makes it visible
        fsync_file(f)
    _fsync_dir(tmp)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    for path in Path(run_dir).glob(f"{PREFIX}*"):
        suffix = path.name[len(PREFIX) :]
        if path.is_dir() and suffix.isdigit() and (path / "state.json").exists():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest complete checkpoint of a run directory."""
    path = Path(path)
    if (path / "state.json").exists():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such directory")
    pickles = [p.name for p in path.glob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}]
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        hint = f" (found pickle files {pickles}: conspo never loads pickles)" if pickles else ""
        raise FileNotFoundError(f"--resume {path}: no complete checkpoint-<step> directory in it{hint}")
    return checkpoints[-1]


def load_checkpoint(checkpoint: Path, model, optimizer, py_rng: random.Random) -> dict:
    """Restore model, optimizer and RNG states in place; return the JSON state."""
    checkpoint = Path(checkpoint)
    weights = ADAPTER_FILE if is_lora(model) else "model.safetensors"
    for required in (weights, "optimizer.safetensors", "rng.safetensors", "state.json"):
        if not (checkpoint / required).exists():
            raise FileNotFoundError(f"checkpoint {checkpoint} is missing {required}")
    with open(checkpoint / "state.json") as f:
        state = json.load(f)
    if is_lora(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(checkpoint / ADAPTER_FILE)))
        missing, unexpected = [], list(result.unexpected_keys)
    else:
        missing, unexpected = load_model(model, str(checkpoint / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")
    device = next(model.parameters()).device
    opt_tensors = {
        k: v.to(device) if not k.endswith(".step") else v
        for k, v in load_file(str(checkpoint / "optimizer.safetensors")).items()
    }
    load_optimizer_state(optimizer, opt_tensors, state["optimizer"])
    restore_torch_rng(load_file(str(checkpoint / "rng.safetensors")))
    version, internal, gauss = state["python_rng"]
    py_rng.setstate((version, tuple(internal), gauss))
    return state


def torch_rng_tensors() -> dict[str, torch.Tensor]:
    """torch's CPU generator state and, with CUDA, every device's (keys ``torch_cpu``, ``torch_cuda_<i>``)."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = state
    return rng


def restore_torch_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [
        rng[k] for k in sorted((k for k in rng if k.startswith("torch_cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    ]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def save_optimizer_file(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The whole optimizer state in one safetensors file (param groups and scalars in its header)."""
    tensors, meta = optimizer_state_tensors(optimizer)
    save_file(tensors, str(path), metadata={"optimizer": json.dumps(meta)})
    fsync_file(path)


def load_optimizer_file(optimizer: torch.optim.Optimizer, path: Path, device: torch.device | str = "cpu") -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["optimizer"])
    tensors = {k: v if k.endswith(".step") else v.to(device) for k, v in load_file(str(path)).items()}
    load_optimizer_state(optimizer, tensors, meta)


def save_rng_file(path: Path, py_rng=random) -> None:
    """One process's random states: torch (CPU, CUDA), numpy's global generator and ``py_rng``
    (default: the ``random`` module's), as safetensors with the non-tensor parts in its header."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss = py_rng.getstate()
    tensors = {**torch_rng_tensors(), "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    header = {
        "numpy": [kind, int(position), int(has_gauss), float(cached_gauss)],
        "python": [version, list(internal), gauss],
    }
    save_file(tensors, str(path), metadata={"rng": json.dumps(header)})
    fsync_file(path)


def load_rng_file(path: Path, py_rng=random) -> None:
    """Restore what ``save_rng_file`` wrote."""
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["rng"])
    tensors = load_file(str(path))
    restore_torch_rng(tensors)
    kind, position, has_gauss, cached_gauss = header["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    version, internal, gauss = header["python"]
    py_rng.setstate((version, tuple(internal), gauss))
