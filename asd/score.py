"""Score new recordings with a submitted run, and say which lie outside what it was trained on.

``python -m asd.score RUN PATH... [--machine M] [--section XX] [--domain D] [--backend B]
[--csv OUT]``: PATH is a WAV file or a folder (every WAV under it, sorted). Each recording's
log-mel (as the cache computes it) is embedded by the run's model and scored by the detector
``asd.submit`` saved for its (machine, section) in the back-end that wrote the run's CSVs (or
``--backend``), against its threshold. Section and domain come from a challenge file name, the
machine from the folder above the split folder (``<machine>/test/<file>``, plain folders'
``<machine>/test/normal/<file>``) or the parent folder;
the options override them. A recording without a domain is scored as the run's CSVs score one
(kNN: any domain; the report's pair: the lower standardised margin of its two detectors).

``outside`` (1: yes) marks a recording farther from every training clip of its section (cosine
distance of the embeddings) than any training clip lies from its nearest other one: its score
extrapolates beyond what the run has seen, whatever the decision says.

Machines and sections the run was not submitted for are refused, and ``--csv`` is never written
into the run folder, so scoring never changes a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asd import AsdError
from asd.infra.checkpoint import load_model
from asd.infra.cli import run_command, section_name, unknown_names
from asd.infra.data import SPLIT_FOLDERS, DataError, parse_name
from asd.infra.io import atomic_path
from asd.infra.runs import Run
from asd.method.detectors import BACKENDS, POOLED, DetectorSet, resolve_backend
from asd.method.embed import embed, inference_batch
from asd.method.features import log_mel, read_audio, warn_converted

COLUMNS = ["file", "machine", "section", "domain", "score", "threshold", "decision", "outside"]
OUTSIDE_RULE = (
    "outside = 1: farther from every training clip of its section than any training clip is "
    "from its nearest other one (cosine distance of the embeddings); its score extrapolates"
)


class ScoreError(AsdError):
    """A recording or run that cannot be scored; the message names it."""


def describe_clip(
    path: str | Path,
    machine: str | None = None,
    section: str | None = None,
    domain: str | None = None,
) -> tuple[str, str | None, str | None]:
    """The (machine, section, domain) of a recording: the options, else its name and folders.
    The section is None where neither tells it, the domain None where it is unknown."""
    path = Path(path)
    if section is None or domain is None:
        # The 2023 rules also read evaluation names, which carry a section but no domain.
        try:
            parsed = parse_name(path.name, "dcase2023")
        except DataError:
            parsed = None
        if parsed is not None:
            section = section or parsed.section
            domain = domain or parsed.domain
    # Challenge folders hold a split folder (train/, test/) under the machine's folder; plain
    # folders one level more (test/normal/, test/anomaly/, train/<condition>/).
    # The names of the folders above the file, nearest first ("" past the root).
    names = [f.name for f in path.absolute().parents][:3] + ["", "", ""]
    if machine is None:
        split = next((i for i in (0, 1) if names[i] in SPLIT_FOLDERS and names[i + 1]), None)
        machine = names[0] if split is None else names[split + 1]
    return machine, section, domain


def wav_files(paths: list[str | Path]) -> list[Path]:
    """The WAV files of ``paths``: files as given, folders as every WAV under them, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            wavs = (f for f in p.rglob("*") if f.suffix.lower() == ".wav" and f.is_file())
            found = sorted(wavs)
            if not found:
                raise ScoreError(f"{p}: a folder without .wav files")
            out += found
        # A missing .wav is left to the audio reader, which names it after the run's checks.
        elif not p.exists() and p.suffix.lower() != ".wav":
            raise ScoreError(f"{p} does not exist")
        else:
            out.append(p)
    return out


def _check_known(dets: DetectorSet, run: Run, f: Path, m: str, s: str | None) -> str:
    """The section of a clip of machine ``m``: ``s``, or the machine's only one; ScoreError
    naming the file where the run does not know them (with a "did you mean" for a machine)."""
    known = dets.sections()
    machines = list(dict.fromkeys(a for a, _ in known))
    if m not in machines:
        raise ScoreError(
            f"{f}: {unknown_names([m], machines, 'machine type')} (of run {run}); give "
            f"--machine for recordings outside the <machine>/test/ layout"
        )
    sections = [b for a, b in known if a == m]
    # A machine with one section needs no section in the name: there is nothing to choose.
    if s is None and len(sections) == 1:
        return sections[0]
    if s is None:
        raise ScoreError(
            f"{f}: not a challenge file name, so its section is unknown ({m} has "
            f"{', '.join(sections)} in run {run}); give --section"
        )
    if (m, s) not in known:
        raise ScoreError(
            f"{f}: run {run} has no section {s!r} of {m} (it has {', '.join(sections)}); "
            f"give --section"
        )
    return s


def run_backend(run: Run, dets: DetectorSet, wanted: str | None) -> str:
    """The back-end to score with: ``wanted``, else the one that wrote the run's CSVs
    (``RUN/scores.csv``), else the report's pair (a run submitted before kNN existed)."""
    backend = wanted
    # The submitted scores say which back-end wrote them, so new recordings score alike.
    if backend is None and run.scores.is_file():
        table = pd.read_csv(run.scores, usecols=lambda c: c == "backend", nrows=1)
        backend = str(table["backend"].iloc[0]) if "backend" in table else None
    # Runs submitted before kNN existed have no back-end column: they used the report's pair.
    backend = resolve_backend(backend or "gmm_ocsvm", True)
    if backend not in dets.backends():
        raise ScoreError(
            f"run {run} has no {backend} detectors (it has: {', '.join(dets.backends())}); "
            f"run asd.submit on it again"
        )
    return backend


def score_files(
    run: str | Path,
    files: list[str | Path],
    machine: str | None = None,
    section: str | None = None,
    domain: str | None = None,
    device: str | None = None,
    backend: str | None = None,
) -> pd.DataFrame:
    """Score recordings with the run's model and saved detectors; one row per file (COLUMNS).
    ``device``: torch device (default: CUDA where present, else the CPU); ``backend``: one of
    BACKENDS (default: the one of the run's CSVs)."""
    run = Run(run)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not run.path.is_dir():
        raise ScoreError(f"no such folder: {run}")
    dets = DetectorSet.load(run.detectors)
    backend = run_backend(run, dets, backend)
    # Every file is checked against the run before the model is loaded, so a wrong name fails fast.
    clips = []
    for f in files:
        m, s, d = describe_clip(f, machine, section, domain)
        clips.append((m, _check_known(dets, run, Path(f), m, s), d))
    loaded = load_model(run.model, device=device)
    fcfg = loaded.cfg.features
    # The run's channel of multi-channel files; rounded to the cache's dtype, as the features
    # the model and detectors were fitted on.
    mels, notes = [], []
    for f in files:
        wave, file_notes = read_audio(f, fcfg, loaded.cfg.data.channel)
        notes += [(f, note) for note in file_notes]
        mels.append(log_mel(wave, fcfg.sample_rate, fcfg).astype(fcfg.dtype))  # (T, F)
    warn_converted(notes, "recording(s)")
    emb = embed(
        loaded.model,
        np.stack(mels),
        loaded.mean,
        loaded.std,
        inference_batch(loaded.cfg.detectors.batch_size, device),
        device=device,
    )  # (N, D)
    rows = []
    for f, (m, s, d), e in zip(files, clips, emb):
        det = dets.lookup(m, s, d, backend)
        score = float(det.score(e[None])[0])
        # The pooled kNN detector of the section knows every training clip, whatever the back-end.
        knn = dets.detectors.get((m, s, POOLED))
        rows.append(
            {
                "file": str(f),
                "machine": m,
                "section": s,
                "domain": d,
                "score": score,
                "threshold": float(det.threshold),
                "decision": int(score > det.threshold),
                "outside": int(knn.outside(e[None])[0]) if knn is not None else pd.NA,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def check_output(csv: str | Path, run: str | Path) -> None:
    """ScoreError where the table would be written into the run folder (it would change the run:
    ``--csv RUN/scores.csv`` would replace the submission's scores)."""
    if Path(run).resolve() in Path(csv).resolve().parents:
        raise ScoreError(f"--csv {csv} is inside the run folder {run}; write the table elsewhere")


def _main(args) -> None:
    if args.csv:
        check_output(args.csv, args.run)
    files = wav_files(args.paths)
    table = score_files(
        args.run, files, args.machine, args.section, args.domain, args.device, args.backend
    )
    # to_string prints every row, unwrapped, where printing the frame would elide some.
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    outside = int((table["outside"] == 1).sum())
    print(
        f"{outside} of {len(table)} recordings lie outside what the run was trained on "
        f"({OUTSIDE_RULE})"
    )
    if args.csv:
        # A previous file of that name stays until the new one is complete.
        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False, float_format="%.10g")
        print(f"wrote {args.csv}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asd.score", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", metavar="RUN", help="run folder (after asd.submit)")
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="audio files (.wav) or folders of them"
    )
    parser.add_argument("--machine", help="machine type (default: from the folders)")
    parser.add_argument(
        "--section",
        type=section_name,
        help="section, 0 or 00 (default: from the name, or the machine's only one)",
    )
    parser.add_argument(
        "--domain",
        choices=("source", "target"),
        help="domain (default: from the name; unknown where the name lacks it)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, help="back-end (default: the one of the run's CSVs)"
    )
    parser.add_argument("--csv", metavar="OUT", help="also write the table to this CSV file")
    parser.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
