"""Checkpoints that rebuild a trained model from the file alone, loadable with weights_only=True,
and the checks a training step makes on them before any run folder is made or changed.

A checkpoint is a dict of tensors, dicts, lists, tuples, str, int, float, bool and None only:

    {"format": "asd-checkpoint-v1", "config": cfg.to_dict(), "classes": {column: [values]},
     "feature_stats": {"mean": (F,) tensor, "std": (F,) tensor}, "model": state_dict,
     "head": state_dict, "step": {...}, **extra}

``extra`` carries resume state (optimizer state dicts, torch.Generator.get_state() tensors,
python ints). Files are written atomically, so a killed writer never leaves half a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from asd import AsdError
from asd.config import Config, ConfigError, config_diffs, from_dict, load_config
from asd.io import atomic_path, atomic_write_text
from asd.losses import SubClusterAdaCos
from asd.model import build_model

FORMAT = "asd-checkpoint-v1"
REQUIRED = ("format", "config", "classes", "feature_stats", "model", "head", "step")
# config groups a trained model depends on; a checkpoint is only usable where these agree
MODEL_GROUPS = ("features", "model", "loss")

log = logging.getLogger(__name__)


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
    step: dict = field(default_factory=dict)
    path: Optional[Path] = None


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            return module


def _state(module: nn.Module | dict) -> dict:
    state = module if isinstance(module, dict) else _unwrap(module).state_dict()
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}


def _stats(values: Any, name: str) -> torch.Tensor:
    if torch.is_tensor(values):
        t = values.detach().cpu().float()
    else:
        t = torch.from_numpy(np.asarray(values, dtype=np.float32).copy())
    if t.dim() != 1:
        raise ValueError(f"save_checkpoint: feature {name} must be 1-d (mels,), "
                         f"got {tuple(t.shape)}")
    return t


def _classes(classes: pd.DataFrame | dict) -> dict:
    if isinstance(classes, pd.DataFrame):
        return {str(c): classes[c].tolist() for c in classes.columns}
    return {str(c): list(v) for c, v in classes.items()}


_PLAIN = (str, int, float, bool, type(None))


def _check_safe(obj: Any, where: str) -> None:
    """Refuse anything torch.load(weights_only=True) would not read back (numpy, dataclasses...)."""
    if torch.is_tensor(obj) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint entry {where}: key {k!r} is not a str or int")
            _check_safe(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint entry {where}: {type(obj).__name__} cannot be saved "
                    "(only tensors, dicts, lists, tuples, str, int, float, bool and None)")


def save_checkpoint(path: str | Path, *, model: nn.Module | dict, head: nn.Module | dict,
                    cfg: Config, classes: pd.DataFrame | dict, mean: Any, std: Any,
                    step: dict, extra: Optional[dict] = None) -> Path:
    """Write the checkpoint dict atomically to ``path``; returns the path.

    ``model`` / ``head`` may be modules (wrappers are unwrapped) or state dicts; tensors are
    moved to the CPU. ``classes`` is the class table (a DataFrame, stored as dict of lists).
    """
    path = Path(path)
    data = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "classes": _classes(classes),
        "feature_stats": {"mean": _stats(mean, "mean"), "std": _stats(std, "std")},
        "model": _state(model),
        "head": _state(head),
        "step": dict(step),
    }
    for key, value in (extra or {}).items():
        if key in data:
            raise ValueError(f"save_checkpoint: extra key {key!r} clashes with a reserved key")
        data[key] = value
    _check_safe(data, "checkpoint")
    try:
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) so
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"cannot write checkpoint {path} (disk full?): {first}; the previous "
                      f"file, if any, is unchanged") from err
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, not a torch file at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated, corrupt or not "
                              f"written by asd.checkpoint.save_checkpoint): {first}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"checkpoint {path} is not an {FORMAT} file (found {found!r})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the key(s) {', '.join(missing)}")
    return data


def checkpoint_config(data: dict, path: str | Path = "<checkpoint>") -> Config:
    """The Config stored in a loaded checkpoint dict, or CheckpointError naming the file."""
    try:
        return from_dict(data["config"])
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path}: stored config is not valid: {err}") from None


def check_compatible(data: dict, cfg: Config, path: str | Path = "<checkpoint>") -> None:
    """Raise CheckpointError unless the checkpoint's features/model/loss settings equal cfg's."""
    diffs = config_diffs(data["config"], cfg.to_dict(), MODEL_GROUPS, "checkpoint", "config")
    if diffs:
        raise CheckpointError(f"checkpoint {path} was trained with other settings: "
                              + "; ".join(diffs))


def load_model(path: str | Path, device: Any = "cpu") -> LoadedModel:
    """Rebuild the model and head from the config and classes stored in the checkpoint."""
    path = Path(path)
    data = load_checkpoint(path)
    cfg = checkpoint_config(data, path)
    classes = pd.DataFrame(data["classes"])
    if len(classes) == 0:
        raise CheckpointError(f"checkpoint {path} holds an empty class table")
    model, head = build_model(cfg, len(classes))
    for name, module in (("model", model), ("head", head)):
        try:
            module.load_state_dict(data[name])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {path}: '{name}' weights do not fit the model its "
                                  f"config and {len(classes)} classes describe: {err}") from None
    stats = data["feature_stats"]
    mean = np.asarray(stats["mean"].float().numpy(), dtype=np.float32)
    std = np.asarray(stats["std"].float().numpy(), dtype=np.float32)
    if mean.shape != (cfg.features.n_mels,) or std.shape != (cfg.features.n_mels,):
        raise CheckpointError(f"checkpoint {path}: feature statistics have shapes {mean.shape}, "
                              f"{std.shape}, expected ({cfg.features.n_mels},)")
    return LoadedModel(model=model.to(device).eval(), head=head.to(device).eval(), cfg=cfg,
                       classes=classes, mean=mean, std=std, step=dict(data["step"]), path=path)


def check_classes(data: dict, classes: pd.DataFrame | dict, path: str | Path) -> None:
    """CheckpointError unless the checkpoint was trained on exactly ``classes``."""
    mine = {k: list(map(str, v)) for k, v in _classes(classes).items()}
    if {k: list(map(str, v)) for k, v in data["classes"].items()} != mine:
        raise CheckpointError(f"checkpoint {path} was trained on other classes than the run's "
                              f"classes.csv ({len(data['classes'].get('class', []))} vs "
                              f"{len(mine['class'])} classes)")


def step1_model(run: Path, cfg: Config) -> Path:
    """The ``model.pth`` of a finished Step 1 run that a Step 2 run with ``cfg`` can start from
    (same features, model and loss settings); ConfigError or CheckpointError naming it else."""
    if not (run / "config.yml").is_file():
        raise ConfigError(f"{run} is not a run folder (no config.yml)")
    model = run / "model.pth"
    if not model.is_file():
        raise ConfigError(f"Step 1 run {run} has no model.pth (not finished? "
                          f"`make stage1 RESUME={run}`)")
    diffs = config_diffs(load_config(run / "config.yml").to_dict(), cfg.to_dict(), MODEL_GROUPS,
                         "Step 1 run", "config")
    if diffs:
        raise ConfigError(f"the config differs from the Step 1 run {run} ({'; '.join(diffs)}); "
                          "Step 2 must use the same features, model and loss")
    stage = load_checkpoint(model)["step"].get("stage")
    if stage != "stage1":
        raise ConfigError(f"{run} is not a Step 1 run (its model.pth is from {stage}); Step 2 "
                          "starts from a finished Step 1 run")
    return model


def resume_state(run_dir: Path, cfg: Config, step: str) -> Optional[int]:
    """For ``--resume``: None when the run is finished, else the epoch its last checkpoint
    ends (0: none yet, start again), checked before any training.

    Removes the temporary files of a writer killed mid-save (never read), refuses a checkpoint
    that cannot be read with weights_only (CheckpointError naming it) and one written with other
    settings than the run's config now holds (ConfigError naming the keys: the file was edited),
    and drops the log rows of later epochs (the resumed run logs them again). When every epoch
    was done (killed before ``model.pth`` was written), writes ``model.pth`` from the checkpoint
    exactly as the finished run would have.
    """
    if (run_dir / "model.pth").is_file():
        return None
    last = run_dir / "checkpoints" / "last.pth"
    for stale in last.parent.glob(f".{last.name}.*.tmp"):
        stale.unlink()
    ckpt = load_checkpoint(last) if last.is_file() else None
    if ckpt is not None:
        diffs = config_diffs(ckpt["config"], cfg.to_dict(), (*MODEL_GROUPS, step), "checkpoint",
                             "config.yml")
        if diffs:
            raise ConfigError(f"{run_dir / 'config.yml'} differs from the settings {last} was "
                              f"trained with ({'; '.join(diffs)}); put them back or start a new "
                              "run")
    epoch = int(ckpt["step"]["epoch"]) if ckpt else 0
    trim_log(run_dir / "logs" / "train.csv", epoch)
    if ckpt is not None and ckpt["step"].get("done"):
        stats = ckpt["feature_stats"]
        save_checkpoint(run_dir / "model.pth", model=ckpt["model"], head=ckpt["head"], cfg=cfg,
                        classes=ckpt["classes"], mean=stats["mean"], std=stats["std"],
                        step=ckpt["step"])
        log.info("%s: all steps were done; wrote model.pth from %s", run_dir, last)
        return None
    return epoch


def trim_log(path: Path, epoch: int) -> None:
    """Keep the header and the complete rows of epochs up to ``epoch`` of a CSV log."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) <= epoch and line.endswith("\n")]
    if keep != lines:
        atomic_write_text(path, "".join(keep))
