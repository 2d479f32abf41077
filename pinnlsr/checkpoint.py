"""Safe loading and saving of network weights.

Checkpoints hold tensors only and are read with ``torch.load(..., weights_only=True)``: a
checkpoint file never executes code. The architecture comes from code the user names explicitly
(a problem's default model, or ``--model module:factory`` / ``--model file.py:factory``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .io import write_atomically


def save_state_dict(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``{"model": state_dict, **extra}`` atomically (temp file + rename). Tensors and plain
    Python values only, so it loads back with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra or {})
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path``: a plain ``torch.save(model.state_dict())`` file, or a dict
    with the weights under "model", "state_dict" or "model_state_dict" (DeepXDE, Lightning-style
    and pinnlsr's own checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint {str(path)!r} holds more than tensors (pickled Python objects), which pinnlsr "
            f"refuses to execute. Re-save it with torch.save(model.state_dict(), path). ({exc})"
        ) from exc
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable torch file: {exc}") from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {str(path)!r} does not contain a state_dict (a dict of tensors); save one "
            "with torch.save(model.state_dict(), path)"
        )
    return obj


def load_into(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the weights in ``path`` into ``model`` (converted to the model's dtype/device).

    Raises a ValueError naming missing, unexpected or mis-shaped entries: the model must be the
    architecture the checkpoint was saved from. Returns notes (e.g. a dtype conversion)."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the model ({type(model).__name__}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}. "
            "Build the network the checkpoint came from (e.g. --model module:factory)."
        )
    notes = []
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    target = {v.dtype for v in own.values() if v.is_floating_point()}
    if dtypes and target and dtypes != target:
        notes.append(f"checkpoint weights {sorted(map(str, dtypes))} converted to {sorted(map(str, target))}")
    for k, v in state.items():
        if not torch.isfinite(v).all() if v.is_floating_point() else False:
            raise FloatingPointError(f"checkpoint {str(path)!r}: tensor {k!r} contains NaN or Inf")
    model.load_state_dict({k: v.to(own[k]) for k, v in state.items()})
    return notes


def resolve_factory(spec: str, what: str = "model factory") -> Callable:
    """The callable named by ``"package.module:attr"`` or ``"path/to/file.py:attr"``; a run calls
    it without arguments to build the network.

    This imports and runs the user's own code (the architecture), never anything from a
    checkpoint file."""
    if ":" not in spec:
        raise ValueError(f"{what} {spec!r} must look like 'module:name' or 'file.py:name'")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise FileNotFoundError(f"{what} file {target!r} does not exist")
        name = f"pinnlsr_user_model_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ValueError(f"{what} {spec!r}: module {exc.name!r} not found; give an importable "
                             "'package.module:name' or a 'path/to/file.py:name'") from None
    if not hasattr(module, attr):
        raise ValueError(f"{what} {spec!r}: {target!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise ValueError(f"{what} {spec!r} is not callable")
    return factory
