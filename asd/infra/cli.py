"""The command line shared by every ``python -m asd.*`` and ``python -m runners.*`` command.

``run_command`` turns an ``AsdError`` (or an ``OSError``, such as a full disk) into one line on
stderr and exit status 2, and Ctrl-C into one line and status 130. Every command has the same
``--config``, ``--from`` and ``key.sub=value`` arguments; a run folder's own ``config.yml`` is
used when no ``--config`` is given, so a run folder is enough to go on from.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from asd import AsdError
from asd.infra.config import Config, load_config
from asd.infra.runs import Run, latest_run

DEFAULT_CONFIG = "config.yml"


def make_parser(
    prog: str, doc: str, *, from_help: str | None = None, overrides: bool = True
) -> argparse.ArgumentParser:
    """A parser with ``--config``, optionally ``--from``, and ``key.sub=value`` overrides."""
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=doc.strip().splitlines()[0].replace("``", "")
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"config file (default: the run's own config.yml where a run folder is "
        f"given, else {DEFAULT_CONFIG})",
    )
    if from_help:
        p.add_argument("--from", dest="from_run", default=None, help=from_help)
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


def load_args_config(args: argparse.Namespace, run: str | Path | None = None) -> Config:
    """``--config`` if given, else ``run``'s ``config.yml`` if there is one, else the default;
    the overrides apply on top in every case."""
    overrides = getattr(args, "overrides", ())
    if args.config is None and run is not None and Run(run).config.is_file():
        return load_config(Run(run).config, overrides)
    return load_config(args.config or DEFAULT_CONFIG, overrides)


def run_command(
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv``, call ``main(args)`` and return its exit status; a ``KeyboardInterrupt``
    raised with a message (e.g. how to resume) prints that message."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(args) or 0
    except (AsdError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"{parser.prog}: interrupted{f' {err}' if str(err) else ''}", file=sys.stderr)
        return 130


def load_run(args: argparse.Namespace, kind: str = "stage2") -> tuple[Path, Config]:
    """The finished run of ``--from`` (default: the latest finished ``*-<kind>`` run of the
    config's ``runs.dir``) and the config to use with it (``load_args_config``)."""
    if args.from_run:
        run = Run.open_finished(args.from_run)
    else:
        run = Run.open_finished(latest_run(load_args_config(args).runs.dir, kind))
    return run.path, load_args_config(args, run.path)
