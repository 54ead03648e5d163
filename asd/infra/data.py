"""The data set index: parse DCASE clip names, walk a data root, assign class ids.

Layouts: DCASE 2021 ``ROOT/{dev_data,eval_data}/<machine>/{train,source_test,target_test}/``,
DCASE 2022/2023 with ``{train,test}/``, or a ROOT holding machine folders (``dataset`` is "").
Evaluation test names carry no label; attributes (the name's tail) may hold ``_`` and ``.``.

Evaluation ground truth: ``ROOT/eval_data/ground_truth/`` in the official DCASE 2021 evaluator's
format (``ground_truth_<machine>_section_<XX>_<domain>_test.csv``, one ``file name,0|1`` row per
clip, 1 = anomaly, no header): copy the evaluator's ``ground_truth_data/*.csv`` there for the
real data; the synthetic generator writes them there.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from asd import AsdError
from asd.infra.io import atomic_path

DATASETS = ("dev_data", "eval_data")
DOMAINS = ("source", "target")
GROUND_TRUTH = "ground_truth"  # folder inside eval_data/ (not a machine)
# test folders and the domain their clips must carry (None: the 2022/2023 mixed test/ folder)
SPLIT_FOLDERS = {"train": None, "source_test": "source", "target_test": "target", "test": None}
COLUMNS = [
    "path",
    "file",
    "dataset",
    "machine",
    "section",
    "domain",
    "split",
    "label",
    "index",
    "attributes",
    "class",
]
CLASS_COLUMNS = ["class", "machine", "section", "domain"]

_EXPECTED = "section_XX_<source|target>_<train|test>_[normal_|anomaly_]NNNN[_attributes].wav"
_NAME = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>[A-Za-z]+)_(?P<split>train|test)_"
    r"(?:(?P<label>normal|anomaly)_)?(?P<index>\d+)(?:_(?P<attributes>.+?))?\.(?i:wav)$"
)


class DataError(AsdError):
    """A data set that cannot be read as expected; the message names the path and the problem."""


@dataclass(frozen=True)
class ClipName:
    """The parts of a clip's file name."""

    section: str  # "00"
    domain: str  # "source" | "target"
    split: str  # "train" | "test"
    label: str | None  # "normal" | "anomaly" | None (evaluation test clips)
    index: int
    attributes: str  # "" if none, e.g. "vel_730_ac_0.11"


def parse_name(file_name: str | Path) -> ClipName:
    """Parse a DCASE clip name (a bare name or a path); DataError names the file otherwise."""
    name = os.path.basename(file_name)
    m = _NAME.match(name)
    if m is None:
        raise DataError(f"{file_name}: not a DCASE clip name; expected {_EXPECTED}")
    domain = m["domain"]
    if domain not in DOMAINS:
        raise DataError(
            f"{file_name}: unknown domain {domain!r}; expected 'source' or 'target' ({_EXPECTED})"
        )
    if m["split"] == "train" and m["label"] != "normal":
        raise DataError(
            f"{file_name}: a training clip name must say 'train_normal'; expected {_EXPECTED}"
        )
    return ClipName(
        m["section"], domain, m["split"], m["label"], int(m["index"]), m["attributes"] or ""
    )


def _machine_folders(root: Path) -> list[tuple[str, Path]]:
    """(dataset, machine folder) pairs under ``root``, in sorted order."""
    datasets = [d for d in DATASETS if (root / d).is_dir()]
    if datasets:
        return [
            (d, p)
            for d in datasets
            for p in sorted((root / d).iterdir())
            if p.is_dir() and not p.name.startswith((".", GROUND_TRUTH))
        ]
    machines = [
        ("", p)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / "train").is_dir()
    ]
    if not machines:
        raise DataError(
            f"{root}: expected dev_data/ or eval_data/ (or machine folders holding "
            f"train/) inside, found neither"
        )
    return machines


def _folder_rows(dataset: str, machine: Path, folder: Path) -> list[dict]:
    """One row per .wav file of a split folder; DataError for a clip of another split or domain."""
    split = "train" if folder.name == "train" else "test"
    domain = SPLIT_FOLDERS[folder.name]
    with os.scandir(folder) as entries:  # entries know their type without a stat call each
        names = sorted(
            e.name
            for e in entries
            if e.name.lower().endswith(".wav") and not e.name.startswith(".") and e.is_file()
        )
    base, rows = folder.absolute(), []
    for name in names:
        path = os.path.join(base, name)
        clip = parse_name(path)
        if clip.split != split or domain not in (None, clip.domain):
            raise DataError(
                f"{path}: a {clip.domain} '{clip.split}' clip inside {folder.name}/; "
                f"expected only {domain or 'source/target'} '{split}' clips there"
            )
        rows.append(
            {
                "path": path,
                "file": name,
                "dataset": dataset,
                "machine": machine.name,
                **dataclasses.asdict(clip),
                "_folder": folder.name,
            }
        )
    return rows


def index_dataset(root: str | Path) -> pd.DataFrame:
    """One row per clip of ``root`` (columns COLUMNS), sorted by dataset, machine, folder, file.

    ``label`` is None for unlabelled (evaluation test) clips; ``class`` is the id of the clip's
    (machine, section, domain) in ``class_table`` of this index, -1 where it has no training clips.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist (or is not a folder); expected a folder "
            f"holding dev_data/ and/or eval_data/ (run `make data` or `make synth`)"
        )
    rows: list[dict] = []
    for dataset, machine in _machine_folders(root):
        train = machine / "train"
        if not train.is_dir():
            raise DataError(
                f"{machine}: machine folder without a train/ folder; expected "
                f"train/ and source_test/, target_test/ (or test/)"
            )
        found = _folder_rows(dataset, machine, train)
        if not found:
            raise DataError(f"{train}: no .wav files; expected the machine's training clips")
        rows += found
        for name in ("source_test", "target_test", "test"):
            if (machine / name).is_dir():
                rows += _folder_rows(dataset, machine, machine / name)
    if not rows:
        raise DataError(f"{root}: no .wav files found; expected <dataset>/<machine>/train/*.wav")
    df = pd.DataFrame(rows).sort_values(["dataset", "machine", "_folder", "file"], kind="stable")
    df = df.drop(columns="_folder").reset_index(drop=True)
    df["label"] = pd.Series([v if isinstance(v, str) else None for v in df["label"]], dtype=object)
    return assign_classes(df, class_table(df))


def class_table(index_df: pd.DataFrame) -> pd.DataFrame:
    """Classes: (machine, section, domain) of the training clips, ids 0..C-1 in sorted order."""
    train = index_df[index_df["split"] == "train"]
    keys = sorted(set(zip(train["machine"], train["section"], train["domain"])))
    rows = [(c, *k) for c, k in enumerate(keys)]
    return pd.DataFrame(rows, columns=CLASS_COLUMNS, dtype=object).astype({"class": int})


def assign_classes(index_df: pd.DataFrame, classes: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``index_df`` with the ids of ``classes`` in its ``class`` column (-1: absent)."""
    lookup = {tuple(k): c for c, *k in classes[CLASS_COLUMNS].itertuples(index=False)}
    keys = zip(index_df["machine"], index_df["section"], index_df["domain"])
    return index_df.assign(**{"class": [lookup.get(k, -1) for k in keys]}).astype({"class": int})


def save_classes(table: pd.DataFrame, path: str | Path) -> None:
    """Write the class table as CSV (class,machine,section,domain), atomically."""
    with atomic_path(path) as tmp:
        table[CLASS_COLUMNS].to_csv(tmp, index=False)


def load_classes(path: str | Path) -> pd.DataFrame:
    """Read a class table written by save_classes; sections stay two-digit strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class table {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={"machine": str, "section": str, "domain": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"class table {path} is not a readable CSV: {err}") from None
    if list(table.columns) != CLASS_COLUMNS:
        raise DataError(
            f"class table {path}: expected columns {CLASS_COLUMNS}, got {list(table.columns)}"
        )
    if list(table["class"]) != list(range(len(table))):
        raise DataError(f"class table {path}: expected class ids 0..{len(table) - 1} in order")
    return table.astype({"class": int, "machine": object, "section": object, "domain": object})


def report_order(frame: pd.DataFrame, by: list) -> pd.DataFrame:
    """``frame`` sorted by its string columns ``by``, case aside: machines in the report's order
    (fan, gearbox, pump, slider, ToyCar, ToyTrain, valve) in every table and figure."""
    return frame.sort_values(by, key=lambda col: col.str.lower(), kind="stable")


def ground_truth_dir(root: str | Path) -> Path:
    """Where the evaluation test labels of ``root`` live (official evaluator's CSV format)."""
    return Path(root) / "eval_data" / GROUND_TRUTH


def csv_name(kind: str, machine: str, section: str, domain: str) -> str:
    """A challenge CSV name: ``<kind>_<machine>_section_<XX>_<domain>_test.csv``, where kind is
    ``anomaly_score``, ``decision_result`` (submission) or ``ground_truth`` (evaluator)."""
    return f"{kind}_{machine}_section_{section}_{domain}_test.csv"


def read_csvs(folder: str | Path, kind: str, value: str, values=None) -> pd.DataFrame:
    """Every ``<kind>_*_test.csv`` of ``folder`` (no header, ``file name,value`` rows):
    DataFrame[machine, section, domain, file, <value>]; ``values`` lists the allowed ones
    (else numbers). DataError naming the file for a foreign name or row."""
    pattern = re.compile(rf"^{kind}_(.+)_section_(\d{{2}})_(source|target)_test\.csv$")
    frames = []
    for f in sorted(Path(folder).glob(f"{kind}_*.csv")):
        m = pattern.match(f.name)
        if m is None:
            raise DataError(
                f"{f}: expected a name like {csv_name(kind, '<machine>', 'XX', '<domain>')}"
            )
        df = pd.read_csv(f, header=None, names=["file", value], dtype={"file": str})
        if not (df[value].isin(values).all() if values else df[value].dtype.kind in "fi"):
            allowed = "|".join(map(str, values)) if values else value
            raise DataError(f"{f}: expected rows 'file name,{allowed}' without a header")
        frames.append(df.assign(machine=m[1], section=m[2], domain=m[3]))
    if not frames:
        raise DataError(f"{folder}: no {kind}_*.csv files")
    out = pd.concat(frames, ignore_index=True)
    return out[["machine", "section", "domain", "file", value]]


def with_ground_truth(index: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """``index`` with the ``label`` of its unlabelled clips taken from the evaluation ground
    truth of ``root`` where that folder exists (clips it does not list stay None)."""
    if index["label"].notna().all() or not ground_truth_dir(root).is_dir():
        return index
    keys = ["machine", "section", "domain", "file"]
    truth = read_csvs(ground_truth_dir(root), "ground_truth", "anomaly", [0, 1])
    anomaly = index[keys].merge(truth, on=keys, how="left")["anomaly"]  # NaN: a clip not listed
    found = anomaly.map({0: "normal", 1: "anomaly"})
    return index.assign(
        label=[
            a if isinstance(a, str) else b if isinstance(b, str) else None
            for a, b in zip(index["label"], found)
        ]
    )
