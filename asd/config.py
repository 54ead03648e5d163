"""Typed configuration: ``config.yml`` groups map one-to-one onto frozen dataclasses.

Loading rejects unknown keys, missing keys and wrong types with an error that names the key,
and applies ``key.sub=value`` overrides (values parsed as YAML, so ``1e-3``, ``[1, 2]`` and
``null`` work). Every default lives in ``config.yml``; the dataclasses only give types.
"""

from __future__ import annotations

from asd import AsdError

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml


class ConfigError(AsdError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    root: str
    cache_dir: str


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    power: float
    amin: float
    top_db: Optional[float]
    frames: int
    dtype: str


@dataclass(frozen=True)
class ModelConfig:
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    blocks_per_stage: int
    time_pool: int
    embedding_dim: int
    leaky_relu_slope: float
    backbone: str = "resnet"  # a stored config from before the key existed means Table 1's


@dataclass(frozen=True)
class LossConfig:
    n_subclusters: int
    max_angle: float


@dataclass(frozen=True)
class Stage1Config:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    seed: int
    checkpoint_every: int


@dataclass(frozen=True)
class Stage2Config:
    iterations: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    seed: int
    trainable: tuple[str, ...]
    log_every: int
    checkpoint_every: int


@dataclass(frozen=True)
class EngineConfig:
    name: str
    amp_dtype: str
    world_size: int
    num_threads: int
    cache_on_device: bool


@dataclass(frozen=True)
class DetectorConfig:
    gmm_covariance: str
    gmm_reg_covar: float
    gmm_max_iter: int
    ocsvm_kernel: str
    ocsvm_nu: float
    ocsvm_gamma: str
    threshold_quantile: float
    batch_size: int
    # Added after the first runs were made: the default stands in where a stored config lacks
    # them, so those runs still load (``_build``); config.yml sets them like every other key.
    threshold_scores: str = "out_of_fold"
    threshold_folds: int = 5


@dataclass(frozen=True)
class RunsConfig:
    dir: str


@dataclass(frozen=True)
class Config:
    data: DataConfig
    features: FeatureConfig
    model: ModelConfig
    loss: LossConfig
    stage1: Stage1Config
    stage2: Stage2Config
    engine: EngineConfig
    detectors: DetectorConfig
    runs: RunsConfig

    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples), as written to a run's ``config.yml``."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``{"group.key": value}`` style overrides applied and type-checked."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set(data, key, value)
        return _build(Config, data, "")


_CHOICES = {
    "features.dtype": ("float16", "float32"),
    "stage1.optimizer": ("adamp", "adam", "sgd"),
    "stage2.optimizer": ("adamp", "adam", "sgd"),
    "engine.name": ("cpu", "gpu", "amp", "ddp"),
    "engine.amp_dtype": ("fp16", "bf16"),
    "detectors.gmm_covariance": ("full", "diag", "tied", "spherical"),
    "detectors.ocsvm_kernel": ("rbf", "linear", "poly", "sigmoid"),
    "detectors.threshold_scores": ("out_of_fold", "training"),
}
# Numbers with a valid range: a batch size of 0 is refused here, naming the key, instead of
# surfacing as a ZeroDivisionError inside training. Keys of list items drop their [i].
_RANGES = {
    **dict.fromkeys(["features.sample_rate", "features.n_fft", "features.hop_length",
                     "features.n_mels", "features.fmax", "features.power", "features.amin",
                     "features.top_db", "features.frames", "model.stem_channels",
                     "model.stem_kernel", "model.stem_stride", "model.stage_channels",
                     "model.blocks_per_stage", "model.time_pool", "model.embedding_dim",
                     "loss.n_subclusters", "loss.max_angle", "stage1.epochs", "stage1.batch_size",
                     "stage1.lr", "stage1.checkpoint_every", "stage2.iterations",
                     "stage2.batch_size", "stage2.lr", "stage2.log_every",
                     "stage2.checkpoint_every", "engine.world_size", "detectors.gmm_max_iter",
                     "detectors.threshold_folds", "detectors.batch_size"], "> 0"),
    **dict.fromkeys(["features.fmin", "model.leaky_relu_slope", "stage1.weight_decay",
                     "stage2.weight_decay", "engine.num_threads", "detectors.gmm_reg_covar"],
                    ">= 0"),
    "detectors.threshold_quantile": "in (0, 1)",
    "detectors.ocsvm_nu": "in (0, 1]",
}
_IN_RANGE = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
             "in (0, 1)": lambda v: 0 < v < 1, "in (0, 1]": lambda v: 0 < v <= 1}


def _check_range(value: int | float, key: str) -> int | float:
    rule = _RANGES.get(key.split("[")[0])
    if rule is not None and not _IN_RANGE[rule](value):
        raise ConfigError(f"config key '{key}': expected a value {rule}, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, key)
    if origin is tuple:
        (inner, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return tuple(_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return _check_range(value, key)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return _check_range(float(value), key)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}': expected one of {_CHOICES[key]}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {key}")  # a bug in this module


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key '{where}{unknown[0]}' (known: {', '.join(names)})")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    missing = [n for n in names if n not in data and n not in defaults]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"missing config key '{where}{missing[0]}'")
    values = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if name not in data:  # a key newer than this config (a run's stored one): its default
            values[name] = defaults[name]
        elif dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], key)
        else:
            values[name] = _check(data[name], hint, key)
    return cls(**values)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {err}") from None
    _set(data, key.strip(), value)


def _set(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(node) if isinstance(node, dict) else "none"
            raise ConfigError(f"override of unknown config key '{key}' "
                              f"('{'.'.join(parts[:depth + 1])}' does not exist; known: {known})")
        if depth < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], dict):
        raise ConfigError(f"override '{key}' names a group; set one of its keys instead")
    node[parts[-1]] = value


def from_dict(data: dict, overrides: Iterable[str] = ()) -> Config:
    """Build a Config from a nested dict plus ``key.sub=value`` overrides."""
    data = _plain(data)
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping of groups at the top level")
    for override in overrides:
        _apply_override(data, override)
    return _build(Config, data, "")


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; ``extends: other.yml`` (relative to this file) merges over a base."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of groups at the top level")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'extends' must be a file path")
        data = _merge(_read(path.parent / base, seen + (path.resolve(),)), data)
    return data


def load_config(path: str | Path = "config.yml", overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (YAML, loaded safely) and apply overrides; errors name the file and key.

    A file may start with ``extends: config.yml`` to change only a few keys of another file
    (``configs/demo.yml`` does).
    """
    path = Path(path)
    data = _read(path)
    try:
        return from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_diffs(a: dict, b: dict, groups: Iterable[str], a_name: str, b_name: str,
                 skip: Iterable[str] = ()) -> list[str]:
    """``"group.key: <a_name> value, <b_name> value"`` for each key of ``groups`` whose value
    differs between two configs as dicts (``Config.to_dict()``), keys in ``skip`` aside; the
    one wording of every "trained with other settings" refusal."""
    skip = set(skip)
    return [f"{g}.{k}: {a_name} {a.get(g, {}).get(k)!r}, {b_name} {v!r}"
            for g in groups for k, v in b[g].items()
            if f"{g}.{k}" not in skip and a.get(g, {}).get(k) != v]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (temporary name, then rename)."""
    from asd.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
