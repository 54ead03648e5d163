"""Checkpoints that rebuild a trained model from the file alone, loadable with weights_only=True,
and the checks a training step makes on them before any run folder is made or changed.

    {"format": "asd-checkpoint-v1", "config": cfg.to_dict(), "classes": {column: [values]},
     "feature_stats": {"mean": (F,) tensor, "std": (F,) tensor}, "model": state_dict,
     "head": state_dict, "progress": {...}, **extra}

with only tensors, dicts, lists, tuples, str, int, float, bool and None inside (``extra``: the
resume state). ``progress`` says how far training got (the step's name, epoch, iteration,
samples, world size, done); files written before it had that name call it ``step`` and are read
as well. Files are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from asd import AsdError
from asd.infra.config import Config, ConfigError, from_dict
from asd.infra.io import atomic_path
from asd.method.losses import SubClusterAdaCos
from asd.method.model import build_model

FORMAT = "asd-checkpoint-v1"
REQUIRED = ("format", "config", "classes", "feature_stats", "model", "head", "progress")
# The key of ``progress`` in checkpoints written before the rename.
OLD_PROGRESS = "step"
# The settings a trained model depends on.
MODEL_GROUPS = ("features", "model", "loss")


class CheckpointError(AsdError):
    """A checkpoint that is missing, unreadable, foreign, incomplete or does not fit its config."""


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint; model and head are in eval mode."""

    model: nn.Module
    head: SubClusterAdaCos
    cfg: Config
    classes: pd.DataFrame
    mean: np.ndarray  # (F,) float32
    std: np.ndarray  # (F,) float32
    progress: dict


def _state(module: nn.Module | dict) -> dict:
    """A state dict on the CPU."""
    state = module if isinstance(module, dict) else module.state_dict()
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}


def _check_safe(obj: Any, where: str) -> None:
    """Refuse anything torch.load(weights_only=True) would not read back (numpy, dataclasses...)."""
    # Containers are walked so the message names the entry, not just the file.
    if isinstance(obj, (dict, list, tuple)):
        for key, value in obj.items() if isinstance(obj, dict) else enumerate(obj):
            _check_safe(value, f"{where}.{key}")
    elif not (torch.is_tensor(obj) or isinstance(obj, (str, int, float, bool, type(None)))):
        raise TypeError(
            f"checkpoint entry {where}: {type(obj).__name__} cannot be saved "
            "(only tensors, dicts, lists, tuples, str, int, float, bool and None)"
        )


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | dict,
    head: nn.Module | dict,
    cfg: Config,
    classes: pd.DataFrame | dict,
    mean: Any,
    std: Any,
    progress: dict,
    extra: dict | None = None,
) -> Path:
    """Write the checkpoint of ``model`` and ``head`` (modules or state dicts) atomically."""
    # Tensors, not arrays: weights_only=True reads no numpy objects back.
    stats = {
        k: torch.tensor(np.asarray(v, dtype=np.float32))
        for k, v in (("mean", mean), ("std", std))  # (F,) each
    }
    data = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "classes": pd.DataFrame(classes).to_dict("list"),
        "feature_stats": stats,
        "model": _state(model),
        "head": _state(head),
        "progress": dict(progress),
    }
    data.update(extra or {})
    # Refuse before writing, so an unreadable file never replaces a good one.
    _check_safe(data, "checkpoint")
    try:
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    # torch's zip writer reports a failed write (a full disk) as a RuntimeError.
    except RuntimeError as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise OSError(
            f"cannot write checkpoint {path} (disk full?): {first}; the "
            "previous file, if any, is unchanged"
        ) from err
    return Path(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; CheckpointError names the file."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    # A truncated zip, a foreign pickle or not a torch file at all: each raises its own type.
    except Exception as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt or not "
            f"written by asd.infra.checkpoint.save_checkpoint): {first}"
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"checkpoint {path} is not an {FORMAT} file (found {found!r})")
    # Checkpoints written before the key was renamed are read under the new name.
    if "progress" not in data and OLD_PROGRESS in data:
        data["progress"] = data.pop(OLD_PROGRESS)
    if missing := [k for k in REQUIRED if k not in data]:
        raise CheckpointError(f"checkpoint {path} lacks the key(s) {', '.join(missing)}")
    return data


def load_model(path: str | Path, device: Any = "cpu") -> LoadedModel:
    """Rebuild the model and head from the config and classes stored in the checkpoint."""
    data = load_checkpoint(path)
    try:
        cfg = from_dict(data["config"])
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path}: stored config is not valid: {err}") from None
    classes = pd.DataFrame(data["classes"])
    model, head = build_model(cfg, len(classes))
    # Weights that do not fit say which part failed, with the sizes the config gives.
    for name, module in (("model", model), ("head", head)):
        try:
            module.load_state_dict(data[name])
        except RuntimeError as err:
            raise CheckpointError(
                f"checkpoint {path}: '{name}' weights do not fit the model its "
                f"config and {len(classes)} classes describe: {err}"
            ) from None
    mean = data["feature_stats"]["mean"].float().numpy()
    std = data["feature_stats"]["std"].float().numpy()
    return LoadedModel(
        model.to(device).eval(),
        head.to(device).eval(),
        cfg,
        classes,
        mean,
        std,
        dict(data["progress"]),
    )


def check_classes(data: dict, classes: pd.DataFrame | dict, path: str | Path) -> None:
    """CheckpointError unless the checkpoint was trained on exactly ``classes``."""
    # Compared as text, so the same classes match whatever types a table was read back with.
    mine = {k: list(map(str, v)) for k, v in pd.DataFrame(classes).to_dict("list").items()}
    stored = {k: list(map(str, v)) for k, v in data["classes"].items()}
    if stored != mine:
        raise CheckpointError(
            f"checkpoint {path} was trained on other classes than the run's "
            f"class table ({len(data['classes'].get('class', []))} vs "
            f"{len(mine['class'])} classes)"
        )
