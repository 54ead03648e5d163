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
    """Where the data set and its feature cache live."""

    root: str
    cache_dir: str
    # defaults only for stored configs older than these keys; config.yml sets them
    layout: Literal["auto", "dcase2021", "dcase2022", "dcase2023", "folders"] = "auto"
    year: Annotated[int, "2021 to 2026"] = 2021
    channel: Annotated[int, ">= 0"] | Literal["mean"] = 0
    classes: Literal["auto", "section", "attributes"] = "auto"


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel settings (report 2.1, docs/reproduction.md "Features")."""

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
    """The embedding net's sizes (report Table 1, docs/reproduction.md "Model")."""

    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    blocks_per_stage: int
    time_pool: int
    embedding_dim: int
    leaky_relu_slope: Annotated[float, ">= 0"]
    # A stored config from before the key existed means Table 1's net.
    backbone: str = "resnet"


@dataclass(frozen=True)
class LossConfig:
    """Sub-cluster AdaCos (report 2.3, docs/reproduction.md "Loss")."""

    n_subclusters: int
    max_angle: float


@dataclass(frozen=True)
class StepConfig:
    """The keys both training steps have (a run's saved config.yml lists them first)."""

    batch_size: int
    optimizer: Literal["adamp", "adam", "sgd"]
    lr: float
    weight_decay: Annotated[float, ">= 0"]
    seed: Annotated[int, "any"]
    checkpoint_every: int


@dataclass(frozen=True)
class Stage1Config(StepConfig):
    """Step 1: source clips only (docs/reproduction.md "Training")."""

    epochs: int


@dataclass(frozen=True)
class Stage2Config(StepConfig):
    """Step 2: source x target pairs, a few parts trainable (docs/reproduction.md "Training")."""

    iterations: int
    trainable: tuple[str, ...]
    log_every: int


@dataclass(frozen=True)
class EngineConfig:
    """Catalyst's engine and its devices (docs/gpu.md)."""

    name: Literal["cpu", "gpu", "amp", "ddp", "ddp_amp"]
    amp_dtype: Literal["fp16", "bf16"]
    world_size: Annotated[int, ">= 0"]
    num_threads: Annotated[int, ">= 0"]
    cache_on_device: bool
    # A default only for stored configs older than the key.
    sync_bn: bool = True


@dataclass(frozen=True)
class DetectorConfig:
    """Detectors and thresholds (report 2.5, docs/reproduction.md "Detectors")."""

    gmm_covariance: Literal["full", "diag", "tied", "spherical"]
    gmm_reg_covar: Annotated[float, ">= 0"]
    gmm_max_iter: int
    ocsvm_kernel: Literal["rbf", "linear", "poly", "sigmoid"]
    ocsvm_nu: Annotated[float, "in (0, 1]"]
    ocsvm_gamma: str
    threshold_quantile: Annotated[float, "in (0, 1)"]
    batch_size: int
    # Defaults only for stored configs older than these keys; config.yml sets them.
    threshold_scores: Literal["out_of_fold", "training"] = "out_of_fold"
    threshold_folds: int = 5
    threshold_target: Literal["source_subsets", "own"] = "source_subsets"
    # None (stored configs older than the key): the target detectors use threshold_quantile.
    threshold_target_quantile: Annotated[float, "in (0, 1)"] | None = None
    backend: Literal["auto", "gmm_ocsvm", "knn"] = "auto"
    knn_k: int = 1


@dataclass(frozen=True)
class RunsConfig:
    """Where the numbered run folders go."""

    dir: str


@dataclass(frozen=True)
class Config:
    """The whole config: one field per group of config.yml."""

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
        # A JSON round trip turns the tuples into lists, as YAML writes them.
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``{"group.key": value}`` overrides applied and type-checked."""
        return _apply(self.to_dict(), overrides.items())


# The ranges an ``Annotated`` number may name; "> 0" is every number's default.
_IN_RANGE = {
    "any": lambda v: True,
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in (0, 1)": lambda v: 0 < v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "2021 to 2026": lambda v: 2021 <= v <= 2026,
}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the annotated type; ConfigError naming ``key`` otherwise."""
    rule = "> 0"
    if typing.get_origin(hint) is Annotated:
        hint, rule = typing.get_args(hint)
    # Optional[X] (None, or a value of X), or one of several types.
    if typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        return _check_union(value, [a for a in typing.get_args(hint) if a is not type(None)], key)
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


def _check_union(value: Any, hints: list, key: str) -> Any:
    """``value`` as the first of ``hints`` that takes it, or one ConfigError naming them all."""
    errors = []
    for hint in hints:
        try:
            return _check(value, hint, key)
        except ConfigError as err:
            errors.append(str(err).split(": ", 1)[-1])
    raise ConfigError(f"config key '{key}': {' or '.join(errors)}")


def _check_scalar(value: Any, hint: type, rule: str, key: str) -> Any:
    """``value`` as a bool, int, float or str within ``rule``; ConfigError naming ``key``."""
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string.
        with contextlib.suppress(ValueError):
            value = float(value)
    # An integer is a number, but true and false are not numbers (Python says they are).
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
    known = f"known: {', '.join(names)}"
    close = difflib.get_close_matches(name, names, n=1)
    if not close:
        return known
    return f"did you mean '{prefix}{close[0]}'? {known}"


def _build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from ``data``, whose keys have ``prefix``."""
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
        # A stored config older than the key gets the key's default, where it has one.
        if name not in data:
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
        # Walk down the groups: ``parent`` is the mapping that holds the last part.
        node = data
        prefix = ""
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                known = _known(prefix, part, node) if isinstance(node, dict) else "known: none"
                raise ConfigError(
                    f"override of unknown config key '{key}' "
                    f"('{prefix}{part}' does not exist; {known})"
                )
            parent = node
            node = node[part]
            prefix = f"{prefix}{part}."
        if isinstance(node, dict):
            raise ConfigError(f"override '{key}' names a group; set one of its keys instead")
        parent[part] = value
    # Types and ranges are checked on the whole config, so an override is checked as a file is.
    return _build(Config, data, "")


def from_dict(data: dict, overrides: Iterable[str] = ()) -> Config:
    """Build a Config from a nested dict plus ``key.sub=value`` overrides."""
    parsed = []
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        key, raw = override.split("=", 1)
        # Parsed as YAML, so an override types a value as the file would (1e-3, [1, 2], null).
        try:
            parsed.append((key.strip(), yaml.safe_load(raw)))
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {err}") from None
    return _apply(data, parsed)


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; ``extends: other.yml`` (relative to this file) names a base."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself")
    try:
        # An empty file reads as None: no groups.
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of groups at the top level")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"config file {path}: 'extends' must be a file path")
        merged = _read(path.parent / base, seen + (path.resolve(),))
        # This file's keys replace the base's one by one inside a group, not group by group.
        for group, keys in data.items():
            both = isinstance(keys, dict) and isinstance(merged.get(group), dict)
            merged[group] = {**merged[group], **keys} if both else keys
        data = merged
    return data


def load_config(path: str | Path = "config.yml", overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (see ``_read``) and apply overrides; errors name the file and the key."""
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
