"""The data set: every clip planned with its name, condition and fault, then written to disk.

Clips are independent: each has its own random stream derived from (seed, its name), so the
output is identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf

from asd.infra.data import (
    LAYOUTS,
    DataError,
    csv_name,
    ground_truth_dir,
    ground_truth_domain_dir,
    section_csv_name,
)
from asd.infra.io import atomic_write_text
from asd.synthetic.counts import SectionCounts, section_counts
from asd.synthetic.designs import (
    DEV_SECTIONS,
    EVAL_SECTIONS,
    FAULTS,
    FORMAT,
    MACHINES,
    MARKER,
    SAMPLE_RATE,
    _condition,
    _key,
    _rng,
    design,
)
from asd.synthetic.machines import synthesize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    """One file to write: where, what it is, and the operating condition and fault it sounds."""

    relpath: str  # dev_data/fan/train/section_00_source_train_normal_0000_strength_1_ambient.wav
    dataset: str
    machine: str
    section: str
    domain: str
    anomaly: bool
    condition: dict
    fault: str | None
    severity: float
    seed: int
    design_section: str = ""  # the design it sounds like, where not ``section`` (2023 on)

    @property
    def name(self) -> str:
        """The file name."""
        return self.relpath.rsplit("/", 1)[1]

    @property
    def folder_machine(self) -> str:
        """The machine folder's name (2023 on, the evaluation set's is ``<machine>Eval``)."""
        parts = self.relpath.split("/")
        return parts[1] if parts[0] in ("dev_data", "eval_data") else parts[0]


def plan(
    *,
    machines: Sequence[str] = MACHINES,
    dev_sections: Sequence[str] = DEV_SECTIONS,
    eval_sections: Sequence[str] = EVAL_SECTIONS,
    n_source: int = 100,
    n_target: int = 3,
    n_test: int = 40,
    seed: int = 0,
    like_dcase2021: bool = False,
    fraction: float = 1.0,
    layout: str = "dcase2021",
) -> list[Clip]:
    """Every clip of the data set with its name, condition and fault, in file order.

    ``n_source``, ``n_target`` and ``n_test`` (per domain) clips per section, or with
    ``like_dcase2021`` the real data set's counts times ``fraction`` (asd.synthetic.counts).
    ``layout``: the folders and names of ``dcase2021``, ``dcase2022``, ``dcase2023`` (one section
    00 per machine type and data set: the first development / evaluation section's design) or
    ``folders`` (the first development section's design; docs/synthetic.md "Layouts").
    """
    if layout != "dcase2021":
        counts = dict(n_source=n_source, n_target=n_target, n_test=n_test)
        counts.update(like_dcase2021=like_dcase2021, fraction=fraction)
        return _later_plan(layout, machines, dev_sections, eval_sections, counts, seed)
    clips = []
    for dataset, sections in (("dev_data", dev_sections), ("eval_data", eval_sections)):
        for machine in machines:
            for section in sections:
                counts = section_counts(
                    machine,
                    section,
                    like_dcase2021=like_dcase2021,
                    fraction=fraction,
                    n_source=n_source,
                    n_target=n_target,
                    n_test=n_test,
                )
                clips += _section_clips(dataset, machine, section, counts, seed)
    return clips


def _section_clips(
    dataset: str, machine: str, section: str, counts: SectionCounts, seed: int
) -> list[Clip]:
    d = design(machine, section)
    out = []

    def add(folder: str, domain: str, anomaly: bool, index: int, name: str) -> None:
        """One clip; ``{a}`` in ``name`` becomes the attribute text of its condition."""
        key = (seed, dataset, machine, section, domain, folder, anomaly, index)
        r = _rng("condition", *key)
        cond = _condition(d, domain, r)
        fault = str(r.choice(FAULTS[machine])) if anomaly else None
        severity = float(r.uniform()) if anomaly else 0.0
        name = name.format(a=cond["attributes"])
        out.append(
            Clip(
                f"{dataset}/{machine}/{folder}/{name}",
                dataset,
                machine,
                section,
                domain,
                anomaly,
                cond,
                fault,
                severity,
                _key("audio", *key),
            )
        )

    for domain, count in (("source", counts.source_train), ("target", counts.target_train)):
        for i in range(count):
            name = f"section_{section}_{domain}_train_normal_{i:04d}_{{a}}.wav"
            add("train", domain, False, i, name)
    for domain, n_test in (("source", counts.source_test), ("target", counts.target_test)):
        folder, head = f"{domain}_test", f"section_{section}_{domain}_test"
        n_anomaly = n_test // 2
        labels = [False] * (n_test - n_anomaly) + [True] * n_anomaly
        if dataset == "eval_data":  # unlabelled names: labels shuffled behind the numbers
            order = _rng("order", seed, machine, section, domain).permutation(n_test)
            for i in range(n_test):
                add(folder, domain, labels[order[i]], i, f"{head}_{i:04d}.wav")
        else:
            counters = {False: 0, True: 0}
            for anomaly in labels:
                i = counters[anomaly]
                counters[anomaly] += 1
                word = "anomaly" if anomaly else "normal"
                add(folder, domain, anomaly, i, f"{head}_{word}_{i:04d}.wav")
    return out


def _later_plan(
    layout: str,
    machines: Sequence[str],
    dev_sections: Sequence[str],
    eval_sections: Sequence[str],
    counts: dict,
    seed: int,
) -> list[Clip]:
    """``plan`` for the layouts after 2021 (dcase2022, dcase2023, folders)."""
    if layout == "folders":
        sets = [("folders", s, s) for s in dev_sections[:1]]
    elif layout == "dcase2023":  # one section per machine type, named 00
        sets = [
            (d, "00", s[0])
            for d, s in (("dev_data", dev_sections), ("eval_data", eval_sections))
            if s
        ]
    else:
        sets = [
            (d, s, s)
            for d, ss in (("dev_data", dev_sections), ("eval_data", eval_sections))
            for s in ss
        ]
    clips = []
    for dataset, section, design_section in sets:
        for machine in machines:
            n = section_counts(machine, design_section, **counts)
            if layout == "folders":
                clips += _folders_clips(machine, design_section, n, seed)
            else:
                eval23 = layout == "dcase2023" and dataset == "eval_data"
                named = f"{machine}Eval" if eval23 else machine
                clips += _later_clips(dataset, machine, section, design_section, n, seed, named)
    return clips


def _clip(
    relpath: str,
    dataset: str,
    machine: str,
    section: str,
    design_section: str,
    domain: str,
    anomaly: bool,
    key: tuple,
) -> Clip:
    """One clip of a layout after 2021, its condition and fault drawn from ``key``; ``{a}`` in
    ``relpath`` becomes the attribute text of its condition."""
    r = _rng("condition", *key)
    cond = _condition(design(machine, design_section), domain, r)
    fault = str(r.choice(FAULTS[machine])) if anomaly else None
    severity = float(r.uniform()) if anomaly else 0.0
    return Clip(
        relpath.format(a=cond["attributes"]),
        dataset,
        machine,
        section,
        domain,
        anomaly,
        cond,
        fault,
        severity,
        _key("audio", *key),
        design_section,
    )


def _test_labels(n_test: int) -> list[bool]:
    """A test domain's labels: half anomalous (the extra one normal when odd)."""
    n_anomaly = n_test // 2
    return [False] * (n_test - n_anomaly) + [True] * n_anomaly


def _later_clips(
    dataset: str,
    machine: str,
    section: str,
    design_section: str,
    counts: SectionCounts,
    seed: int,
    named: str = "",
) -> list[Clip]:
    """A section in the 2022+ layout: train/ and test/ (names with attributes; evaluation test
    names ``section_XX_NNNN.wav`` numbered over both domains in shuffled order). With one section
    per machine type (dcase2023) the evaluation set's machine folders are ``<machine>Eval``: as
    in the real data, no machine type is in both sets."""
    top, out = f"{dataset}/{named or machine}", []
    for domain, count in (("source", counts.source_train), ("target", counts.target_train)):
        for i in range(count):
            key = (seed, dataset, machine, section, domain, "train", False, i, design_section)
            name = f"{top}/train/section_{section}_{domain}_train_normal_{i:04d}_{{a}}.wav"
            out.append(_clip(name, dataset, machine, section, design_section, domain, False, key))
    tests = [
        (domain, anomaly, i)
        for domain, n in (("source", counts.source_test), ("target", counts.target_test))
        for anomaly, i in _numbered(_test_labels(n))
    ]
    if dataset == "eval_data":  # no domain, no label: both shuffled behind the numbers
        order = _rng("order", seed, machine, section, design_section).permutation(len(tests))
        tests = [tests[j] for j in order]
    for j, (domain, anomaly, i) in enumerate(tests):
        key = (seed, dataset, machine, section, domain, "test", anomaly, i, design_section)
        word = "anomaly" if anomaly else "normal"
        name = (
            f"section_{section}_{j:04d}.wav"
            if dataset == "eval_data"
            else f"section_{section}_{domain}_test_{word}_{i:04d}_{{a}}.wav"
        )
        out.append(
            _clip(
                f"{top}/test/{name}",
                dataset,
                machine,
                section,
                design_section,
                domain,
                anomaly,
                key,
            )
        )
    return out


def _numbered(labels: list[bool]) -> list[tuple[bool, int]]:
    """(label, number among the clips of that label) for each of ``labels``."""
    counters = {False: 0, True: 0}
    out = []
    for anomaly in labels:
        out.append((anomaly, counters[anomaly]))
        counters[anomaly] += 1
    return out


def _folders_clips(machine: str, section: str, counts: SectionCounts, seed: int) -> list[Clip]:
    """A machine in the folders layout: the source training clips in ``train/usual/`` and the
    target ones in ``train/changed/`` (none: all in ``train/``), test clips of both domains in
    ``test/normal/`` and ``test/anomaly/``; plain names ``rec_NNNN.wav``."""
    two = counts.target_train > 0
    out = []
    for domain, count, sub in (
        ("source", counts.source_train, "usual/" if two else ""),
        ("target", counts.target_train, "changed/"),
    ):
        for i in range(count):
            key = (seed, "folders", machine, section, domain, "train", False, i)
            name = f"{machine}/train/{sub}rec_{i:04d}.wav"
            out.append(_clip(name, "folders", machine, section, section, domain, False, key))
    tests = [
        (domain, anomaly, i)
        for domain, n in (("source", counts.source_test), ("target", counts.target_test))
        for anomaly, i in _numbered(_test_labels(n))
    ]
    order = _rng("order", seed, "folders", machine, section).permutation(len(tests))
    numbers = {False: 0, True: 0}
    for j in order:
        domain, anomaly, i = tests[j]
        key = (seed, "folders", machine, section, domain, "test", anomaly, i)
        name = f"{machine}/test/{'anomaly' if anomaly else 'normal'}/rec_{numbers[anomaly]:04d}.wav"
        numbers[anomaly] += 1
        out.append(_clip(name, "folders", machine, section, section, domain, anomaly, key))
    return out


def render(clip: Clip, duration: float = 10.0, channels: int = 1) -> np.ndarray:
    """The clip's samples as int16 (samples,), or (samples, 2) with ``channels`` 2: the near
    microphone and a far one (2026's files; docs/synthetic.md "Layouts")."""
    y = synthesize(
        clip.machine,
        clip.design_section or clip.section,
        clip.condition,
        clip.fault,
        clip.severity,
        np.random.default_rng(clip.seed),
        duration,
    )
    if channels == 2:
        y = np.stack([y, far_microphone(y, clip.seed)], axis=1)
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def far_microphone(near: np.ndarray, seed: int) -> np.ndarray:
    """What a microphone further away records: the machine a quarter as loud, a few samples
    later and smoothed (air and distance take the highs), over more room noise of its own."""
    r = np.random.default_rng(_key("far", seed))
    later = np.concatenate([np.zeros(8, np.float32), near[:-8]]) * np.float32(0.25)
    smoothed = np.convolve(later, np.full(4, 0.25, np.float32), mode="same")
    return (smoothed + 0.01 * r.standard_normal(len(near))).astype(np.float32)


def _write(root: Path, clip: Clip, duration: float, channels: int = 1) -> None:
    """Write one clip in place: the set's marker, not each file, says when the set is complete
    (an interrupted set is written again from the start), so no temporary file is needed."""
    path = root / clip.relpath
    try:
        samples = render(clip, duration, channels)
        sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    except sf.SoundFileError as err:  # a full disk: libsndfile says only "System error"
        raise OSError(f"{path}: could not write ({err})") from err


def _write_many(args: tuple[str, list[Clip], float, int]) -> int:
    root, clips, duration, channels = args
    for clip in clips:
        _write(Path(root), clip, duration, channels)
    return len(clips)


# A clip allocates and frees many arrays of a clip's length; glibc's malloc would hand that
# memory back to the system after each one and fault it in again for the next.
_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (for the processes started meanwhile) and restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_ground_truth(root: Path, clips: Iterable[Clip], layout: str = "dcase2021") -> list[Path]:
    """Write the evaluator's ground truth of the evaluation test clips: 2021
    ``ground_truth_<machine>_section_XX_<domain>_test.csv``; 2022 on
    ``ground_truth_<machine>_section_XX_test.csv`` and the same names in ground_truth_domain/
    (1 = target). The folders layout has none (its test folders say the labels)."""
    groups: dict[tuple[str, str, str], list[tuple[str, int, int]]] = {}
    for c in clips:
        if c.dataset == "eval_data" and "/train/" not in c.relpath:
            key = (c.folder_machine, c.section, c.domain if layout == "dcase2021" else "")
            groups.setdefault(key, []).append((c.name, int(c.anomaly), int(c.domain == "target")))
    paths = []
    for (machine, section, domain), rows in sorted(groups.items()):
        if layout == "dcase2021":
            name = csv_name("ground_truth", machine, section, domain)
        else:
            name = section_csv_name("ground_truth", machine, section)
            path = ground_truth_domain_dir(root) / name
            atomic_write_text(path, "".join(f"{n},{t}\n" for n, _, t in sorted(rows)))
            paths.append(path)
        path = ground_truth_dir(root) / name
        atomic_write_text(path, "".join(f"{n},{y}\n" for n, y, _ in sorted(rows)))
        paths.append(path)
    return paths


def write_attributes(root: Path, clips: Iterable[Clip]) -> list[Path]:
    """The 2022+ ``<machine>/attributes_XX.csv`` beside train/ and test/: each clip's path below
    the data set folder and its condition (``file_name,d1p,d1v``; the reader does not need it)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in clips:
        relpath = c.relpath.split("/", 1)[1]
        groups.setdefault((c.dataset, c.folder_machine, c.section), []).append(
            f"{relpath},condition,{c.condition['attributes']}\n"
        )
    paths = []
    for (dataset, machine, section), rows in sorted(groups.items()):
        path = root / dataset / machine / f"attributes_{section}.csv"
        atomic_write_text(path, "file_name,d1p,d1v\n" + "".join(rows))
        paths.append(path)
    return paths


def _check_settings(
    machines, dev_sections, eval_sections, n_source, n_target, n_test, duration, fraction
):
    """DataError for a setting the generator cannot write."""
    for m in machines:
        if m not in MACHINES:
            raise DataError(f"unknown machine type {m!r}; expected some of {', '.join(MACHINES)}")
    for s in (*dev_sections, *eval_sections):
        if not (isinstance(s, str) and len(s) == 2 and s.isdigit()):
            raise DataError(f"section {s!r}: expected two digits such as '00'")
    both = set(dev_sections) & set(eval_sections)
    if both:
        raise DataError(f"sections {sorted(both)} are both development and evaluation sections")
    if not machines or not (dev_sections or eval_sections):
        raise DataError("expected at least one machine type and one section")
    if n_source < 1 or n_target < 0 or n_test < 0:
        raise DataError(
            f"expected n_source >= 1, n_target >= 0, n_test >= 0; "
            f"got {n_source}, {n_target}, {n_test}"
        )
    if not 0.5 <= duration <= 60:
        raise DataError(f"duration {duration} s: expected 0.5 to 60 s")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction {fraction}: expected more than 0 and at most 1")


def generate(
    root: str | Path,
    *,
    machines: Sequence[str] = MACHINES,
    dev_sections: Sequence[str] = DEV_SECTIONS,
    eval_sections: Sequence[str] = EVAL_SECTIONS,
    n_source: int = 100,
    n_target: int = 3,
    n_test: int = 40,
    duration: float = 10.0,
    seed: int = 0,
    like_dcase2021: bool = False,
    fraction: float = 1.0,
    layout: str = "dcase2021",
    channels: int = 1,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write the synthetic data set into ``root`` and return it.

    ``n_test`` clips per section and domain, half of them anomalous, or with ``like_dcase2021``
    the real data set's counts times ``fraction`` (see ``plan``), in ``layout`` (one of
    asd.infra.data.LAYOUTS), with ``channels`` 1 or 2 (near and far microphone, as 2026's).
    A root that already holds the same settings is left as it is; one with other settings
    written here is replaced; a root holding any other data set is refused (DataError), so real
    data is never mixed in.
    """
    machines, dev_sections = tuple(machines), tuple(dev_sections)
    eval_sections = tuple(eval_sections)
    _check_settings(
        machines, dev_sections, eval_sections, n_source, n_target, n_test, duration, fraction
    )
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if channels not in (1, 2):
        raise DataError(f"channels {channels}: expected 1 or 2")
    root = Path(root)
    settings = {
        "format": FORMAT,
        "machines": list(machines),
        "dev_sections": list(dev_sections),
        "eval_sections": list(eval_sections),
        "n_source": n_source,
        "n_target": n_target,
        "n_test": n_test,
        "duration": duration,
        "seed": seed,
        "like_dcase2021": like_dcase2021,
        "fraction": fraction,
    }
    if layout != "dcase2021" or channels != 1:  # a 2021 set's marker stays as it was
        settings.update(layout=layout, channels=channels)
    plain = {k: v for k, v in settings.items() if k not in ("format", "duration", "channels")}
    clips = plan(**plain)
    if _complete(root, settings, clips):
        log.info("%s already holds this synthetic data set", root)
        return root
    _claim(root, settings, clips)
    _write_all(root, clips, duration, channels, workers, progress)
    write_ground_truth(root, clips, layout)
    if layout in ("dcase2022", "dcase2023"):
        write_attributes(root, clips)
    os.sync()  # every clip on disk before the marker says the set is complete
    atomic_write_text(root / MARKER, json.dumps({"settings": settings, "complete": True}, indent=1))
    log.info("wrote %d clips into %s", len(clips), root)
    return root


def _tops(clips: Iterable[Clip]) -> set[str]:
    """The folders directly under the root that ``clips`` go into."""
    return {c.relpath.split("/", 1)[0] for c in clips}


def _complete(root: Path, settings: dict, clips: list[Clip]) -> bool:
    """Whether ``root`` holds a complete synthetic data set of ``settings`` already."""
    marker = root / MARKER
    if not marker.is_file():
        return False
    old = json.loads(marker.read_text())
    return (
        old.get("settings") == settings
        and bool(old.get("complete"))
        and all((root / c.relpath).is_file() for c in clips)
    )


def _claim(root: Path, settings: dict, clips: list[Clip]) -> None:
    """Make ``root`` ours to write: a set written here before (its marker says so) is removed;
    a root holding other folders where ours go is refused (DataError)."""
    marker = root / MARKER
    tops = _tops(clips)
    if marker.is_file():  # ours: start afresh
        old = json.loads(marker.read_text()).get("settings", {})
        before = set(old.get("machines", [])) if old.get("layout") == "folders" else set()
        for name in {"dev_data", "eval_data"} | before | tops:
            shutil.rmtree(root / name, ignore_errors=True)
    elif any((root / name).exists() for name in tops | {"dev_data", "eval_data"}):
        raise DataError(
            f"{root} already holds {' or '.join(sorted(tops))} that asd.synthetic did not "
            f"write (no {MARKER}); choose an empty folder for the synthetic data"
        )
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": False}, indent=1))
    for folder in sorted({(root / c.relpath).parent for c in clips}):
        folder.mkdir(parents=True, exist_ok=True)


def _write_all(
    root: Path, clips: list[Clip], duration: float, channels: int, workers: int, progress: bool
) -> None:
    """Write every clip's file, in ``workers`` processes, with a progress bar if asked."""
    jobs = [(str(root), clips[i : i + 16], duration, channels) for i in range(0, len(clips), 16)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(clips), unit="clip", desc="synthetic data")
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                with _environment(_WORKER_ENV):  # read by each worker as it starts
                    done_counts = pool.map(_write_many, jobs)
                for done in done_counts:
                    if bar is not None:
                        bar.update(done)
        else:
            for job in jobs:
                done = _write_many(job)
                if bar is not None:
                    bar.update(done)
    finally:
        if bar is not None:
            bar.close()
