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

from asd.infra.data import DataError, csv_name, ground_truth_dir
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
) -> list[Clip]:
    """Every clip of the data set with its name, condition and fault, in file order.

    ``n_source``, ``n_target`` and ``n_test`` (per domain) clips per section, or with
    ``like_dcase2021`` the real data set's counts times ``fraction`` (asd.synthetic.counts).
    """
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


def render(clip: Clip, duration: float = 10.0) -> np.ndarray:
    """The clip's samples as int16 (samples,)."""
    y = synthesize(
        clip.machine,
        clip.section,
        clip.condition,
        clip.fault,
        clip.severity,
        np.random.default_rng(clip.seed),
        duration,
    )
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def _write(root: Path, clip: Clip, duration: float) -> None:
    """Write one clip in place: the set's marker, not each file, says when the set is complete
    (an interrupted set is written again from the start), so no temporary file is needed."""
    path = root / clip.relpath
    try:
        sf.write(path, render(clip, duration), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    except sf.SoundFileError as err:  # a full disk: libsndfile says only "System error"
        raise OSError(f"{path}: could not write ({err})") from err


def _write_many(args: tuple[str, list[Clip], float]) -> int:
    root, clips, duration = args
    for clip in clips:
        _write(Path(root), clip, duration)
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


def write_ground_truth(root: Path, clips: Iterable[Clip]) -> list[Path]:
    """Write the evaluator's ``ground_truth_<machine>_section_XX_<domain>_test.csv`` files."""
    groups: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    for c in clips:
        if c.dataset == "eval_data" and "/train/" not in c.relpath:
            name = c.relpath.rsplit("/", 1)[1]
            groups.setdefault((c.machine, c.section, c.domain), []).append((name, int(c.anomaly)))
    paths = []
    for (machine, section, domain), rows in sorted(groups.items()):
        path = ground_truth_dir(root) / csv_name("ground_truth", machine, section, domain)
        atomic_write_text(path, "".join(f"{name},{y}\n" for name, y in sorted(rows)))
        paths.append(path)
    return paths


def _check_settings(
    machines, dev_sections, eval_sections, n_source, n_target, n_test, duration, fraction
):
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
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write the synthetic data set into ``root`` and return it.

    ``n_test`` clips per section and domain, half of them anomalous, or with ``like_dcase2021``
    the real data set's counts times ``fraction`` (see ``plan``). A root that already holds
    the same settings is left as it is; one with other settings written here is replaced; a
    root holding any other data set is refused (DataError), so real data is never mixed in.
    """
    machines, dev_sections = tuple(machines), tuple(dev_sections)
    eval_sections = tuple(eval_sections)
    _check_settings(
        machines, dev_sections, eval_sections, n_source, n_target, n_test, duration, fraction
    )
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
    clips = plan(**{k: v for k, v in settings.items() if k not in ("format", "duration")})
    marker = root / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if (
            old.get("settings") == settings
            and old.get("complete")
            and all((root / c.relpath).is_file() for c in clips)
        ):
            log.info("%s already holds this synthetic data set", root)
            return root
        for name in ("dev_data", "eval_data"):  # ours (the marker says so): start afresh
            shutil.rmtree(root / name, ignore_errors=True)
    elif any((root / name).exists() for name in ("dev_data", "eval_data")):
        raise DataError(
            f"{root} already holds dev_data/ or eval_data/ that asd.synthetic did not "
            f"write (no {MARKER}); choose an empty folder for the synthetic data"
        )
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": False}, indent=1))
    for folder in sorted({(root / c.relpath).parent for c in clips}):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), clips[i : i + 16], duration) for i in range(0, len(clips), 16)]
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
    write_ground_truth(root, clips)
    os.sync()  # every clip on disk before the marker says the set is complete
    atomic_write_text(marker, json.dumps({"settings": settings, "complete": True}, indent=1))
    log.info("wrote %d clips into %s", len(clips), root)
    return root
