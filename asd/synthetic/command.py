"""Write the synthetic data set: DCASE 2021 Task 2 by default, another year's layout or plain folders.

    python -m asd.synthetic [ROOT] [--config C] [key.sub=value ...] [options]

ROOT defaults to the config's ``data.root``. ``--like-dcase2021`` writes the real data set's
counts per section and split (about 59,000 clips; ``--fraction 0.1`` for a tenth of them).
``--layout`` writes the folders and names of another year (dcase2022, dcase2023: also 2024-2026)
or plain folders; ``--channels 2`` two-channel files as 2026's (near and far microphone).
"""

from __future__ import annotations

import argparse
import os

from asd.infra.cli import make_parser, names_argument, run_command, sections_argument
from asd.infra.data import LAYOUTS
from asd.synthetic.dataset import generate
from asd.synthetic.designs import DEV_SECTIONS, EVAL_SECTIONS, MACHINES


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("asd.synthetic", __doc__, overrides=False)
    p.add_argument(
        "args",
        nargs="*",
        metavar="[ROOT] [key.sub=value]",
        help="output folder (default: data.root of the config) and config overrides",
    )
    p.add_argument(
        "--machines",
        type=names_argument(MACHINES),
        default=MACHINES,
        help="comma-separated machine types (default: all seven)",
    )
    p.add_argument(
        "--sections-dev",
        type=sections_argument,
        default=DEV_SECTIONS,
        help="development sections, comma-separated, 0 or 00 ('' for none; default: 00,01,02)",
    )
    p.add_argument(
        "--sections-eval",
        type=sections_argument,
        default=EVAL_SECTIONS,
        help="evaluation sections, comma-separated ('' for none; default: 03,04,05)",
    )
    p.add_argument(
        "--n-source",
        type=int,
        default=100,
        help="source training clips per section (default: %(default)s)",
    )
    p.add_argument(
        "--n-target",
        type=int,
        default=3,
        help="target training clips per section (default: %(default)s)",
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=40,
        help="test clips per section and domain, half anomalous (default: %(default)s)",
    )
    p.add_argument(
        "--like-dcase2021",
        action="store_true",
        help="the real data set's clips per section and split instead of --n-*",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="with --like-dcase2021: this share of the source training and test clips (default: 1)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds per clip (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="dcase2021",
        help="folders and names of that layout (docs/data.md; default: %(default)s)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: near and far microphone in each file, as 2026's (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes writing clips (default: the cores, at most 8)",
    )
    return p


def _main(ns: argparse.Namespace) -> int:
    from asd.index import resolve_root
    from asd.infra.data import DataError

    if ns.fraction != 1.0 and not ns.like_dcase2021:
        raise DataError("--fraction applies to --like-dcase2021 only")
    root = resolve_root(ns.args, ns.config)
    generate(
        root,
        machines=ns.machines,
        dev_sections=ns.sections_dev,
        eval_sections=ns.sections_eval,
        n_source=ns.n_source,
        n_target=ns.n_target,
        n_test=ns.n_test,
        duration=ns.duration,
        seed=ns.seed,
        like_dcase2021=ns.like_dcase2021,
        fraction=ns.fraction,
        layout=ns.layout,
        channels=ns.channels,
        workers=ns.workers,
        progress=True,
    )
    print(root)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_main, build_parser(), argv)
