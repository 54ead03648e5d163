"""The data set index: tell the layout of a data root, parse clip names, walk it, assign classes.

Layouts (``data.layout``; ``auto`` tells them apart, ``detect_layout``), docs/data.md:

- ``dcase2021``: ``ROOT/{dev_data,eval_data}/<machine>/{train,source_test,target_test}/``;
- ``dcase2022``: ``ROOT/{dev_data,eval_data}/<machine>/{train,test}/`` and ``attributes_XX.csv``
  beside them, several sections per machine; evaluation test names ``section_XX_NNNN.wav`` carry
  neither domain nor label;
- ``dcase2023`` (also 2024-2026): as 2022 with one section (00) per machine type;
- ``folders``: ``ROOT/<machine>/train/[<condition>/]*.wav`` with any names (all normal) and
  optional ``ROOT/<machine>/test/{normal,anomaly}/*.wav``.

A DCASE layout may also stand without ``dev_data/`` and ``eval_data/`` (a ROOT holding machine
folders; ``dataset`` is then ""). Attributes (the name's tail) may hold ``_`` and ``.``.

Evaluation ground truth: ``ROOT/eval_data/ground_truth/`` in the official evaluators' format, one
``file name,0|1`` row per clip (1 = anomaly, no header): 2021
``ground_truth_<machine>_section_<XX>_<domain>_test.csv``; 2022 on
``ground_truth_<machine>_section_<XX>_test.csv``, with the domains (1 = target) in files of the
same names in ``ROOT/eval_data/ground_truth_domain/``. Copy the evaluator's
``ground_truth_data/*.csv`` and ``ground_truth_domain/*.csv`` there for the real data; the
synthetic generator writes them there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from asd import AsdError
from asd.infra.io import atomic_path

log = logging.getLogger(__name__)

LAYOUTS = ("dcase2021", "dcase2022", "dcase2023", "folders")
DATASETS = ("dev_data", "eval_data")
# The ``dataset`` of every clip of the folders layout.
FOLDERS_DATASET = "folders"
# The folders layout has one section per machine.
FOLDERS_SECTION = "00"
DOMAINS = ("source", "target")
# A folder inside eval_data/ that is not a machine.
GROUND_TRUTH = "ground_truth"
# 2022 on: the domains of the evaluation test clips.
GROUND_TRUTH_DOMAIN = "ground_truth_domain"
# The split folders and the domain their clips must carry (None: train/ and the 2022+ test/).
SPLIT_FOLDERS = {"train": None, "source_test": "source", "target_test": "target", "test": None}
# The folders layout's test/ sub-folders.
TEST_LABELS = ("normal", "anomaly")
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
# The class table's extra column when attribute combinations are classes.
CONDITION = "attributes"
CLASS_MODES = ("section", "attributes")
# The organisers' name part for hidden attributes.
NO_ATTRIBUTE = "noAttribute"

_EXPECTED = "section_XX_<source|target>_<train|test>_[normal_|anomaly_]NNNN[_attributes].wav"
_EXPECTED_EVAL = "section_XX_NNNN.wav (an evaluation test clip)"
_NAME = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>[A-Za-z]+)_(?P<split>train|test)_"
    r"(?:(?P<label>normal|anomaly)_)?(?P<index>\d+)(?:_(?P<attributes>.*?))?\.(?i:wav)$"
)
# 2022 on: evaluation test clips hide their domain and label.
_EVAL_NAME = re.compile(r"^section_(?P<section>\d{2})_(?P<index>\d+)\.(?i:wav)$")
_SECTION = re.compile(r"^section_(\d{2})_")


class DataError(AsdError):
    """A data set that cannot be read as expected; the message names the path and the problem."""


@dataclass(frozen=True)
class Layout:
    """How a data root is laid out: ``name`` (one of LAYOUTS) and why it was chosen."""

    name: str
    reason: str = "configured (data.layout)"

    @property
    def classes(self) -> str:
        """What ``data.classes: auto`` means here: ``section`` where a machine type has several
        sections (2021, 2022), else ``attributes`` (2023 on: attribute combinations; folders:
        the condition sub-folders of train/)."""
        return "section" if self.name in ("dcase2021", "dcase2022") else "attributes"


@dataclass(frozen=True)
class ClipName:
    """The parts of a clip's file name."""

    section: str  # "00"
    domain: str | None  # "source" | "target" | None (2022+ evaluation test clips)
    split: str  # "train" | "test"
    label: str | None  # "normal" | "anomaly" | None (evaluation test clips)
    index: int
    attributes: str  # "" if none, e.g. "vel_730_ac_0.11"


def parse_name(file_name: str | Path, layout: str = "dcase2021") -> ClipName:
    """Parse a DCASE clip name (a bare name or a path); DataError names the file otherwise.

    From ``dcase2022`` on, an evaluation test name ``section_XX_NNNN.wav`` (no domain, no label)
    is one too. An empty attribute part (``..._0000_.wav``) reads as none."""
    name = os.path.basename(file_name)
    later = layout in ("dcase2022", "dcase2023")
    # Only from 2022 on can a name lack its domain; a 2021 name without one is refused.
    if later and (e := _EVAL_NAME.match(name)):
        return ClipName(
            section=e["section"],
            domain=None,
            split="test",
            label=None,
            index=int(e["index"]),
            attributes="",
        )
    m = _NAME.match(name)
    if m is None:
        also = f" or {_EXPECTED_EVAL}" if later else ""
        raise DataError(f"{file_name}: not a DCASE clip name; expected {_EXPECTED}{also}")
    domain = m["domain"]
    # The pattern takes any word as a domain, so a misspelt one is named rather than unmatched.
    if domain not in DOMAINS:
        raise DataError(
            f"{file_name}: unknown domain {domain!r}; expected 'source' or 'target' ({_EXPECTED})"
        )
    if m["split"] == "train" and m["label"] != "normal":
        raise DataError(
            f"{file_name}: a training clip name must say 'train_normal'; expected {_EXPECTED}"
        )
    return ClipName(
        section=m["section"],
        domain=domain,
        split=m["split"],
        label=m["label"],
        index=int(m["index"]),
        attributes=m["attributes"] or "",
    )


def _visible_dirs(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` in sorted order, hidden ones and ground truth aside."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith((".", GROUND_TRUTH, "__MACOSX"))
    )


def _wav_names(folder: Path) -> list[str]:
    """The names of the .wav files directly inside ``folder``, sorted."""
    # Entries know their type without a stat call each, which counts on large data sets.
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.name.lower().endswith(".wav") and not e.name.startswith(".") and e.is_file()
        )


def _machine_folders(root: Path) -> list[tuple[str, Path]]:
    """(dataset, machine folder) pairs of a DCASE layout under ``root``, in sorted order."""
    datasets = [d for d in DATASETS if (root / d).is_dir()]
    if datasets:
        return [(d, p) for d in datasets for p in _visible_dirs(root / d)]
    # A root of machine folders stands for one data set, whose name is "".
    machines = [("", p) for p in _visible_dirs(root) if (p / "train").is_dir()]
    if not machines:
        raise DataError(_NO_LAYOUT.format(root=root))
    return machines


_NO_LAYOUT = (
    "{root}: matches no data layout; expected dev_data/ or eval_data/ holding machine "
    "folders (DCASE), or <machine>/train/*.wav folders (data.layout: folders)"
)


def detect_layout(root: str | Path, configured: str = "auto") -> Layout:
    """The layout of ``root``: ``configured`` unless it is ``auto``, else told from its folders
    and names (logged in one line); DataError naming the root where nothing matches."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist (or is not a folder); expected a folder "
            f"holding dev_data/ and/or eval_data/ (run `make data` or `make synth`)"
        )
    if configured != "auto":
        if configured not in LAYOUTS:
            raise DataError(f"data layout {configured!r}: expected auto or one of {LAYOUTS}")
        layout = Layout(configured)
    else:
        layout = _detect(root)
    log.info("%s: %s layout (%s)", root, layout.name, layout.reason)
    return layout


def _detect(root: Path) -> Layout:
    """``detect_layout``'s rules, in order (docs/data.md "Layouts")."""
    # Without dev_data/ or eval_data/, a root of machine folders is the folders layout unless
    # its first training name is a DCASE one.
    if not any((root / d).is_dir() for d in DATASETS):
        machines = [p for p in _visible_dirs(root) if (p / "train").is_dir()]
        if not machines:
            raise DataError(_NO_LAYOUT.format(root=root))
        first = next((n for p in machines for n in _wav_names(p / "train")), None)
        if first is None or _NAME.match(first) is None:
            return Layout(
                "folders",
                f"machine folders whose train/ holds no DCASE names, e.g. "
                f"{first or 'condition sub-folders'}",
            )
    folders = _machine_folders(root)
    # index_dataset goes on to say that no clip is there.
    if not folders:
        return Layout("dcase2021", "dev_data/ or eval_data/ without machine folders")
    # 2021 splits its test clips by domain; 2022 on mixes them in test/ beside attributes files.
    old = [m for _, m in folders if (m / "source_test").is_dir() or (m / "target_test").is_dir()]
    new = [m for _, m in folders if (m / "test").is_dir() or any(m.glob("attributes_*.csv"))]
    if old and new:
        raise DataError(
            f"{root}: mixes the 2021 layout ({old[0]} has source_test/ or target_test/) and "
            f"the 2022+ layout ({new[0]} has test/ or attributes_XX.csv); keep one year per root"
        )
    if not new:
        return Layout("dcase2021", "source_test/ and target_test/ folders")
    # 2022 and 2023 differ only in the sections: 2023 on has one (00) per machine type.
    for _, machine in folders:
        train = machine / "train"
        names = _wav_names(train) if train.is_dir() else []
        sections = {m[1] for m in map(_SECTION.match, names) if m}
        if sections - {"00"}:
            return Layout(
                "dcase2022",
                f"test/ folders, {machine.name} has sections {', '.join(sorted(sections))}",
            )
    return Layout("dcase2023", "test/ folders, one section (00) per machine type")


def _folder_rows(dataset: str, machine: Path, folder: Path, layout: str) -> list[dict]:
    split = "train" if folder.name == "train" else "test"
    domain = SPLIT_FOLDERS[folder.name]
    base = folder.absolute()
    rows = []
    for name in _wav_names(folder):
        path = os.path.join(base, name)
        clip = parse_name(path, layout)
        # A clip in the wrong folder would be trained on or scored as the wrong split or domain.
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


def _dcase_rows(root: Path, layout: str) -> list[dict]:
    """The clips of a DCASE layout, machine folder by machine folder."""
    tests = ("source_test", "target_test") if layout == "dcase2021" else ("test",)
    rows: list[dict] = []
    for dataset, machine in _machine_folders(root):
        train = machine / "train"
        if not train.is_dir():
            raise DataError(
                f"{machine}: machine folder without a train/ folder; expected "
                f"train/ and {'/, '.join(tests)}/"
            )
        found = _folder_rows(dataset, machine, train, layout)
        # A machine without training clips has no class, and nothing to train its detector on.
        if not found:
            raise DataError(f"{train}: no .wav files; expected the machine's training clips")
        rows += found
        for name in tests:
            if (machine / name).is_dir():
                rows += _folder_rows(dataset, machine, machine / name, layout)
    return rows


def _conditions(train: Path) -> dict[str, list[str]]:
    """The training clips of a folders-layout machine per condition sub-folder ("": none)."""
    loose = _wav_names(train)
    subs = _visible_dirs(train)
    # Either the clips or the condition sub-folders: a mix leaves a condition without a name.
    if loose and subs:
        raise DataError(
            f"{train}: holds both .wav files and sub-folders; expected either the clips or "
            f"one sub-folder of clips per operating condition"
        )
    groups = {"": loose} if loose else {s.name: _wav_names(s) for s in subs}
    for condition, names in groups.items():
        if not names:
            raise DataError(f"{train / condition}: no .wav files; expected training clips")
    if not groups:
        raise DataError(f"{train}: no .wav files; expected the machine's training clips")
    return groups


def _folders_rows(root: Path) -> list[dict]:
    """The clips of the folders layout: the smallest condition of a machine with several plays
    the target domain (Step 2's pairs), the others the source; test clips have no domain."""
    rows: list[dict] = []
    machines = [p for p in _visible_dirs(root) if (p / "train").is_dir()]
    if not machines:
        raise DataError(_NO_LAYOUT.format(root=root))
    for machine in machines:
        groups = _conditions(machine / "train")
        # The condition with the fewest clips plays the target domain (the first name among
        # equals); a machine of one condition has no target.
        target = None
        if len(groups) > 1:
            target = min(groups, key=lambda c: (len(groups[c]), c))
        for condition, names in groups.items():
            domain = "target" if condition == target else "source"
            folder = machine / "train" / condition if condition else machine / "train"
            rows += _plain_rows(machine, folder, names, "train", domain, "normal", condition)
        rows += _folders_tests(machine)
    return rows


def _folders_tests(machine: Path) -> list[dict]:
    """A folders-layout machine's labelled test clips (``test/normal``, ``test/anomaly``)."""
    test = machine / "test"
    if not test.is_dir():
        return []
    loose = _wav_names(test)
    subs = [s.name for s in _visible_dirs(test)]
    # The sub-folder is the label, so a clip outside normal/ and anomaly/ would have none.
    if loose or set(subs) - set(TEST_LABELS):
        raise DataError(
            f"{test}: expected only the sub-folders normal/ and anomaly/ holding .wav files"
        )
    rows: list[dict] = []
    for label in TEST_LABELS:
        if (test / label).is_dir():
            names = _wav_names(test / label)
            rows += _plain_rows(machine, test / label, names, "test", None, label, "")
    return rows


def _plain_rows(
    machine: Path,
    folder: Path,
    names: list[str],
    split: str,
    domain: str | None,
    label: str,
    condition: str,
) -> list[dict]:
    """Rows of a folders-layout folder; ``file`` is the path below train/ or test/ (unique)."""
    base = folder.absolute()
    top = machine / split
    # Names are free in this layout, so the path below train/ or test/ is the unique ``file``.
    return [
        {
            "path": os.path.join(base, name),
            "file": os.path.relpath(folder / name, top),
            "dataset": FOLDERS_DATASET,
            "machine": machine.name,
            "section": FOLDERS_SECTION,
            "domain": domain,
            "split": split,
            "label": label,
            "index": i,
            "attributes": condition,
            "_folder": split,
        }
        for i, name in enumerate(names)
    ]


def index_dataset(root: str | Path, layout: str | Layout = "auto") -> pd.DataFrame:
    """One row per clip of ``root`` (columns COLUMNS), sorted by dataset, machine, folder, file.

    ``layout``: a Layout, or ``data.layout`` (``auto``: ``detect_layout``). ``label`` is None for
    unlabelled (evaluation test) clips, ``domain`` None where neither name nor folder tells it;
    ``class`` is the id of the clip's (machine, section, domain) in ``class_table`` of this index,
    -1 where it has no training clips.
    """
    root = Path(root)
    chosen = layout if isinstance(layout, Layout) else detect_layout(root, layout)
    if chosen.name == "folders":
        rows = _folders_rows(root)
    else:
        rows = _dcase_rows(root, chosen.name)
    if not rows:
        raise DataError(f"{root}: no .wav files found; expected <dataset>/<machine>/train/*.wav")
    # Sorted, so the index is the same whatever order the file system lists the folders in.
    order = ["dataset", "machine", "_folder", "file"]
    df = pd.DataFrame(rows).sort_values(order, kind="stable")
    df = df.drop(columns="_folder").reset_index(drop=True)
    # None, never NaN, where unknown: the columns compare and print alike in every layout.
    for column in ("label", "domain"):
        df[column] = pd.Series(
            [v if isinstance(v, str) else None for v in df[column]], dtype=object
        )
    return assign_classes(df, class_table(df))


def condition(attributes: object) -> str:
    """The attribute combination a clip's ``attributes`` names for attribute classes: "" where
    there is none or it is hidden (``noAttribute``)."""
    if not isinstance(attributes, str) or attributes == NO_ATTRIBUTE:
        return ""
    return attributes


def class_mode(configured: str, layout: Layout | str) -> str:
    """``data.classes`` resolved: ``section`` or ``attributes`` (``auto``: the layout's)."""
    if configured in CLASS_MODES:
        return configured
    if configured != "auto":
        raise DataError(f"data.classes {configured!r}: expected auto, section or attributes")
    return (layout if isinstance(layout, Layout) else Layout(layout)).classes


def class_table(index_df: pd.DataFrame, mode: str = "section") -> pd.DataFrame:
    """Classes of the training clips, ids 0..C-1 in sorted order: (machine, section, domain)
    with ``mode`` ``section`` (the report's); with ``attributes`` one per attribute combination
    of the training names as well (column ``attributes``; "" where hidden: one per domain)."""
    train = index_df[index_df["split"] == "train"]
    parts = [train["machine"], train["section"], train["domain"]]
    columns = CLASS_COLUMNS
    if mode == "attributes":
        parts.append(train["attributes"].map(condition))
        columns = [*CLASS_COLUMNS, CONDITION]
    elif mode != "section":
        raise DataError(f"class mode {mode!r}: expected one of {CLASS_MODES}")
    # Sorted keys give the same ids to the same classes on every machine and in every run.
    keys = sorted(set(zip(*parts)))
    rows = [(c, *k) for c, k in enumerate(keys)]
    return pd.DataFrame(rows, columns=columns, dtype=object).astype({"class": int})


def warn_single_class(table: pd.DataFrame, root: str | Path | None) -> None:
    """Say in one line (a warning) that a class table of one class teaches the classifier
    nothing, and what gives classes."""
    if len(table) == 1:
        # The class's name parts, without the id and the empty ones.
        name = " ".join(str(v) for v in table.iloc[0].tolist()[1:] if v)
        log.warning(
            "%s: the training clips form ONE class (%s), and a classifier of one class learns "
            "nothing; classes come from several machine folders, condition sub-folders of "
            "train/ (folders layout), sections or attribute combinations (data.classes)",
            root,
            name,
        )


def assign_classes(index_df: pd.DataFrame, classes: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``index_df`` with the ids of ``classes`` in its ``class`` column (-1: absent)."""
    columns = [c for c in classes.columns if c != "class"]
    lookup = {tuple(k): c for c, *k in classes[["class", *columns]].itertuples(index=False)}
    # Clips of classes without training clips (test-only sections) get -1.
    parts = [index_df["machine"], index_df["section"], index_df["domain"]]
    if CONDITION in columns:
        parts.append(index_df["attributes"].map(condition))
    ids = [lookup.get(k, -1) for k in zip(*parts)]
    return index_df.assign(**{"class": ids}).astype({"class": int})


def save_classes(table: pd.DataFrame, path: str | Path) -> None:
    """Write the class table as CSV (class,machine,section,domain[,attributes]), atomically."""
    columns = [*CLASS_COLUMNS, CONDITION] if CONDITION in table.columns else CLASS_COLUMNS
    with atomic_path(path) as tmp:
        table[columns].to_csv(tmp, index=False)


def load_classes(path: str | Path) -> pd.DataFrame:
    """Read a class table written by save_classes; sections stay two-digit strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class table {path} does not exist")
    # Read as text, so sections stay "00" and an empty attribute stays "".
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"class table {path} is not a readable CSV: {err}") from None
    if list(table.columns) not in (CLASS_COLUMNS, [*CLASS_COLUMNS, CONDITION]):
        raise DataError(
            f"class table {path}: expected columns {CLASS_COLUMNS} (and {CONDITION}), "
            f"got {list(table.columns)}"
        )
    if list(table["class"]) != [str(i) for i in range(len(table))]:
        raise DataError(f"class table {path}: expected class ids 0..{len(table) - 1} in order")
    text_columns = {c: object for c in table.columns if c != "class"}
    return table.astype({"class": int}).astype(text_columns)


def report_order(frame: pd.DataFrame, by: list) -> pd.DataFrame:
    """``frame`` sorted by its string columns ``by``, case aside: machines in the report's order
    (fan, gearbox, pump, slider, ToyCar, ToyTrain, valve) in every table and figure."""
    return frame.sort_values(by, key=lambda col: col.str.lower(), kind="stable")


def ground_truth_dir(root: str | Path) -> Path:
    """Where the evaluation test labels of ``root`` live (official evaluator's CSV format)."""
    return Path(root) / "eval_data" / GROUND_TRUTH


def ground_truth_domain_dir(root: str | Path) -> Path:
    """Where the evaluation test domains of ``root`` live (2022 on; 1 = target)."""
    return Path(root) / "eval_data" / GROUND_TRUTH_DOMAIN


def csv_name(kind: str, machine: str, section: str, domain: str) -> str:
    """A challenge CSV name: ``<kind>_<machine>_section_<XX>_<domain>_test.csv``, where kind is
    ``anomaly_score``, ``decision_result`` (submission) or ``ground_truth`` (evaluator)."""
    return f"{kind}_{machine}_section_{section}_{domain}_test.csv"


def section_csv_name(kind: str, machine: str, section: str) -> str:
    """A 2022+ challenge CSV name, one per section: ``<kind>_<machine>_section_<XX>_test.csv``."""
    return f"{kind}_{machine}_section_{section}_test.csv"


def read_csvs(folder: str | Path, kind: str, value: str, values=None) -> pd.DataFrame:
    """Every ``<kind>_*_test.csv`` of ``folder`` (no header, ``file name,value`` rows):
    DataFrame[machine, section, domain (None: a file of a section's both domains, 2022 on),
    file, <value>]; ``values`` lists the allowed ones (else numbers). DataError naming the file
    for a foreign name or row."""
    pattern = re.compile(rf"^{kind}_(.+)_section_(\d{{2}})(?:_(source|target))?_test\.csv$")
    frames = []
    # A file of the kind with a foreign name is refused, not skipped: its rows would be lost.
    for f in sorted(Path(folder).glob(f"{kind}_*.csv")):
        m = pattern.match(f.name)
        if m is None:
            raise DataError(
                f"{f}: expected a name like {kind}_<machine>_section_XX[_<domain>]_test.csv"
            )
        df = pd.read_csv(f, header=None, names=["file", value], dtype={"file": str})
        # A header row would make the column text; so would any row that is not a number.
        valid = df[value].isin(values).all() if values else df[value].dtype.kind in "fi"
        if not valid:
            allowed = "|".join(map(str, values)) if values else value
            raise DataError(f"{f}: expected rows 'file name,{allowed}' without a header")
        frames.append(df.assign(machine=m[1], section=m[2], domain=m[3]))
    if not frames:
        raise DataError(f"{folder}: no {kind}_*.csv files")
    out = pd.concat(frames, ignore_index=True)
    return out[["machine", "section", "domain", "file", value]]


_TRUTH_NAME = re.compile(r"^ground_truth_(.+)_section_(\d{2})(?:_(source|target))?_test\.csv$")


def read_truth(folder: str | Path, value: str) -> pd.DataFrame:
    """The ground-truth CSVs of ``folder`` in either evaluator's naming (2021: one per section and
    domain; 2022 on: one per section): DataFrame[machine, section, domain (None in 2022+ names),
    file, <value> 0|1]. DataError naming the file for a foreign name or row."""
    frames = []
    for f in sorted(Path(folder).glob("ground_truth_*.csv")):
        m = _TRUTH_NAME.match(f.name)
        if m is None:
            raise DataError(
                f"{f}: expected a name like ground_truth_<machine>_section_XX[_<domain>]_test.csv"
            )
        try:
            df = pd.read_csv(f, header=None, names=["file", value], dtype={"file": str})
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(f"{f}: not a readable CSV ({err})") from None
        if not df[value].isin([0, 1]).all():
            raise DataError(f"{f}: expected rows 'file name,0|1' without a header")
        frames.append(df.assign(machine=m[1], section=m[2], domain=m[3]))
    if not frames:
        raise DataError(f"{folder}: no ground_truth_*.csv files")
    out = pd.concat(frames, ignore_index=True)
    return out[["machine", "section", "domain", "file", value]]


def with_ground_truth(index: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """``index`` with the ``label`` of its unlabelled clips, and the ``domain`` of clips whose
    name hides it (2022 on), taken from the evaluation ground truth of ``root`` where those
    folders exist. A clip of a section the ground truth covers but does not list is refused
    (DataError naming the clip); sections it does not cover stay None."""
    out = index
    labels = ground_truth_dir(root)
    domains = ground_truth_domain_dir(root)
    # Only clips whose name hides the label or the domain are looked up.
    if out["label"].isna().any() and labels.is_dir():
        out = out.assign(label=_merged(out, labels, "anomaly", "label", TEST_LABELS))
    if out["domain"].isna().any() and domains.is_dir():
        out = out.assign(domain=_merged(out, domains, "target", "domain", DOMAINS))
    return out


def _merged(index: pd.DataFrame, folder: Path, value: str, column: str, words: tuple) -> list:
    """``index[column]``, its None values filled from the ground truth in ``folder`` (0 ->
    words[0], 1 -> words[1]) matched by machine, section, file (and domain in 2021 names)."""
    truth = read_truth(folder, value)
    keys = ["machine", "section", "file"]
    by_domain = truth["domain"].notna().all()
    # 2021 names: the same file name stands in both domains.
    if by_domain:
        keys.append("domain")
    table = truth[[*keys, value]].drop_duplicates(keys)
    merged = index[keys].merge(table, on=keys, how="left")
    found = merged[value].map(dict(enumerate(words)))
    # A section the ground truth covers must list each of its clips; other sections stay None.
    covered = set(zip(truth["machine"], truth["section"]))
    out = []
    for known, new, path, machine, section in zip(
        index[column], found, index["path"], index["machine"], index["section"]
    ):
        if isinstance(known, str):
            out.append(known)
        elif isinstance(new, str):
            out.append(new)
        elif (machine, section) in covered:
            raise DataError(
                f"{path}: an evaluation test clip that the ground truth in {folder} does not "
                f"list (its {machine} section {section} file lacks it): ground truth of other data?"
            )
        else:
            out.append(None)
    return out
