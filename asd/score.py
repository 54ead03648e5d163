"""Score new recordings of a known machine and section with a submitted run.

``python -m asd.score RUN FILE... [--machine M] [--section XX] [--domain D] [--csv OUT]``: each
recording's log-mel (as the cache computes it) is embedded by the run's model and scored by the
detector ``asd.submit`` saved for its (machine, section, domain), against its threshold. Section
and domain come from a challenge file name, the machine from the folder above the split folder
(``<machine>/test/<file>``) or the parent folder; the options override them. Machines and
sections the run was not submitted for are refused, and ``--csv`` is never written into the run
folder, so scoring never changes a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asd import AsdError
from asd.infra.checkpoint import load_model
from asd.infra.cli import run_command
from asd.infra.data import SPLIT_FOLDERS, DataError, parse_name
from asd.infra.io import atomic_path
from asd.infra.runs import Run
from asd.method.detectors import DetectorSet
from asd.method.embed import embed, inference_batch
from asd.method.features import load_audio, log_mel

COLUMNS = ["file", "machine", "section", "domain", "score", "threshold", "decision"]


class ScoreError(AsdError):
    """A recording or run that cannot be scored; the message names it."""


def describe_clip(
    path: str | Path,
    machine: str | None = None,
    section: str | None = None,
    domain: str | None = None,
) -> tuple[str, str, str]:
    """(machine, section, domain) of a recording: the options, else its name and folders."""
    path = Path(path)
    if section is None or domain is None:
        try:
            parsed = parse_name(path.name)
        except DataError:
            raise ScoreError(
                f"{path}: not a challenge file name, so its section and domain are "
                f"unknown; give --section and --domain"
            ) from None
        section, domain = section or parsed.section, domain or parsed.domain
    parent = path.absolute().parent
    if machine is None:
        machine = parent.parent.name if parent.name in SPLIT_FOLDERS else parent.name
    return machine, section, domain


def score_files(
    run: str | Path,
    files: list[str | Path],
    machine: str | None = None,
    section: str | None = None,
    domain: str | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Score recordings with the run's model and saved detectors; one row per file (COLUMNS).
    ``device``: torch device (default: CUDA where present, else the CPU)."""
    run, device = Run(run), device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not run.path.is_dir():
        raise ScoreError(f"no such folder: {run}")
    dets = DetectorSet.load(run.detectors)
    known = dets.sections()
    clips = [describe_clip(f, machine, section, domain) for f in files]
    for f, (m, s, _) in zip(files, clips):
        if (m, s) not in known:
            what = f"machine {m!r}" if m not in {a for a, _ in known} else f"section {s!r} of {m}"
            raise ScoreError(
                f"{f}: {what} is unknown to run {run} (it knows: "
                f"{', '.join(f'{a} {b}' for a, b in known)}); give "
                f"--machine/--section for recordings outside the layout"
            )
    loaded = load_model(run.model, device=device)
    fcfg = loaded.cfg.features
    mels = [
        log_mel(load_audio(f, fcfg), fcfg.sample_rate, fcfg).astype(fcfg.dtype)  # (T, F):
        for f in files
    ]  # rounded like the cache the model and detectors were fitted on
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
        det = dets.lookup(m, s, d)
        score = float(det.score(e[None])[0])
        rows.append(
            {
                "file": str(f),
                "machine": m,
                "section": s,
                "domain": d,
                "score": score,
                "threshold": float(det.threshold),
                "decision": int(score > det.threshold),
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
    table = score_files(args.run, args.files, args.machine, args.section, args.domain, args.device)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))  # every row, unwrapped
    if args.csv:
        with atomic_path(args.csv) as tmp:  # a previous file of that name stays until complete
            table.to_csv(tmp, index=False, float_format="%.10g")
        print(f"wrote {args.csv}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asd.score", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run", metavar="RUN", help="run folder (after asd.submit)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (.wav)")
    parser.add_argument("--machine", help="machine type (default: from the folders)")
    parser.add_argument("--section", help="section, two digits (default: from the name)")
    parser.add_argument(
        "--domain", choices=("source", "target"), help="domain (default: from the name)"
    )
    parser.add_argument("--csv", metavar="OUT", help="also write the table to this CSV file")
    parser.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
