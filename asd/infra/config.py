"""Typed configuration: ``config.yml`` groups map one-to-one onto frozen dataclasses.

Loading rejects unknown, missing and wrongly typed keys with an error that names the key, and
applies ``key.sub=value`` overrides parsed as YAML (``1e-3``, ``[1, 2]``, ``null``). Every default
lives in ``config.yml``; the dataclasses only give types. Every number must be > 0 (a batch size
of 0 is refused naming the key, not deep in training) unless ``Annotated`` names another range;
``Literal`` lists the choices of a string.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from asd import AsdError
from asd.infra.io import atomic_write_text


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
    fmin: Annotated[float, ">= 0"]
    fmax: float
    power: float
    amin: float
    top_db: float | None
    frames: int
    dtype: Literal["float16", "float32"]


@dataclass(frozen=True)
class ModelConfig:
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    blocks_per_stage: int
    time_pool: int
    embedding_dim: int
    leaky_relu_slope: Annotated[float, ">= 0"]
    backbone: str = "resnet"  # a stored config from before the key existed means Table 1's


@dataclass(frozen=True)
class LossConfig:
    n_subclusters: int
    max_angle: float


@dataclass(frozen=True)
class StepConfig:  # the keys of both steps (a run's saved config.yml lists them first)
    batch_size: int
    optimizer: Literal["adamp", "adam", "sgd"]
    lr: float
    weight_decay: Annotated[float, ">= 0"]
    seed: Annotated[int, "any"]
    checkpoint_every: int


@dataclass(frozen=True)
class Stage1Config(StepConfig):
    epochs: int


@dataclass(frozen=True)
class Stage2Config(StepConfig):
    iterations: int
    trainable: tuple[str, ...]
    log_every: int


@dataclass(frozen=True)
class EngineConfig:
    name: Literal["cpu", "gpu", "amp", "ddp", "ddp_amp"]
    amp_dtype: Literal["fp16", "bf16"]
    world_size: Annotated[int, ">= 0"]
    num_threads: Annotated[int, ">= 0"]
    cache_on_device: bool
    sync_bn: bool = True  # default only for stored configs older than the key


@dataclass(frozen=True)
class DetectorConfig:
    gmm_covariance: Literal["full", "diag", "tied", "spherical"]
    gmm_reg_covar: Annotated[float, ">= 0"]
    gmm_max_iter: int
    ocsvm_kernel: Literal["rbf", "linear", "poly", "sigmoid"]
    ocsvm_nu: Annotated[float, "in (0, 1]"]
    ocsvm_gamma: str
    threshold_quantile: Annotated[float, "in (0, 1)"]
    batch_size: int
    # defaults only for stored configs older than these keys; config.yml sets them
    threshold_scores: Literal["out_of_fold", "training"] = "out_of_fold"
    threshold_folds: int = 5
    threshold_target: Literal["source_subsets", "own"] = "source_subsets"


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
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``{"group.key": value}`` style overrides applied and type-checked."""
        return _apply(self.to_dict(), overrides.items())


_IN_RANGE = {
    "any": lambda v: True,
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in (0, 1)": lambda v: 0 < v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type, or raise ConfigError naming ``key``."""
    rule = "> 0"
    if typing.get_origin(hint) is Annotated:
        hint, rule = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(
                f"config key '{key}': expected one of {typing.get_args(hint)}, got {value!r}"
            )
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    return _check_scalar(value, hint, rule, key)


def _check_scalar(value: Any, hint: type, rule: str, key: str) -> Any:
    """``value`` as a bool, int, float or str within ``rule``, or a ConfigError naming ``key``."""
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string.
        with contextlib.suppress(ValueError):
            value = float(value)
    kinds = (int, float) if hint is float else hint
    if not isinstance(value, kinds) or (isinstance(value, bool) and hint is not bool):
        raise ConfigError(f"config key '{key}': expected {_EXPECTED[hint]}, got {value!r}")
    if hint in (int, float):
        value = hint(value)
        if not _IN_RANGE[rule](value):
            raise ConfigError(f"config key '{key}': expected a value {rule}, got {value!r}")
    return value


def _known(prefix: str, name: str, names: Iterable[str]) -> str:
    """``did you mean 'stage1.epochs'? known: ...`` for an unknown key ``prefix + name``."""
    names = list(names)
    close = difflib.get_close_matches(name, names, n=1)
    return (f"did you mean '{prefix}{close[0]}'? " if close else "") + f"known: {', '.join(names)}"


def _build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from ``data``, whose keys start with ``prefix``."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix[:-1]}': expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' ({_known(prefix, unknown[0], fields)})"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for name, field in fields.items():
        if name not in data:  # a stored config older than the key: its default, if it has one
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"missing config key '{prefix}{name}'")
            values[name] = field.default
        elif dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], data[name], f"{prefix}{name}.")
        else:
            values[name] = _check(data[name], hints[name], prefix + name)
    return cls(**values)


def _apply(data: dict, overrides: Iterable[tuple[str, Any]]) -> Config:
    """A Config from a copy of ``data`` with ``data[group][name] = value`` for each ("group.name",
    value) of ``overrides``; a whole group cannot be overridden."""
    data = copy.deepcopy(data)
    for key, value in overrides:
        node, prefix = data, ""
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = _known(prefix, part, node) if isinstance(node, dict) else "known: none"
                raise ConfigError(
                    f"override of unknown config key '{key}' "
                    f"('{prefix}{part}' does not exist; {known})"
                )
            parent, node, prefix = node, node[part], f"{prefix}{part}."
        if isinstance(node, dict):
            raise ConfigError(f"override '{key}' names a group; set one of its keys instead")
        parent[part] = value
    return _build(Config, data, "")


def from_dict(data: dict, overrides: Iterable[str] = ()) -> Config:
    """Build a Config from a nested dict plus ``key.sub=value`` overrides."""
    parsed = []
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        key, raw = override.split("=", 1)
        try:
            parsed.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {err}") from None
    return _apply(data, parsed)


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; ``extends: other.yml`` (relative to this file) merges over a base."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}  # an empty file: no groups
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of groups at the top level")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'extends' must be a file path")
        merged = _read(path.parent / base, seen + (path.resolve(),))
        for group, keys in data.items():  # over the base key by key inside a group
            both = isinstance(keys, dict) and isinstance(merged.get(group), dict)
            merged[group] = {**merged[group], **keys} if both else keys
        data = merged
    return data


def load_config(path: str | Path = "config.yml", overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (safe YAML, see ``_read``) and apply overrides; errors name file and key."""
    data = _read(Path(path))
    try:
        return from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_diffs(
    a: dict, b: dict, groups: Iterable[str], a_name: str, b_name: str, skip: Iterable[str] = ()
) -> list[str]:
    """``"group.key: <a_name> value, <b_name> value"`` for each key of ``groups`` (but ``skip``)
    that differs between two ``Config.to_dict()``: every "other settings" refusal's wording."""
    return [
        f"{g}.{k}: {a_name} {a.get(g, {}).get(k)!r}, {b_name} {v!r}"
        for g in groups
        for k, v in b[g].items()
        if f"{g}.{k}" not in skip and a.get(g, {}).get(k) != v
    ]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (temporary name, then rename)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
