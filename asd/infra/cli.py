"""The command line shared by every ``python -m asd.*`` and ``python -m runners.*`` command.

``run_command`` turns an ``AsdError`` (or an ``OSError``, such as a full disk) into one line on
stderr and exit status 2, and Ctrl-C into one line and status 130. Every command has the same
``--config``, ``--from`` and ``key.sub=value`` arguments; a run folder's own ``config.yml`` is
used when no ``--config`` is given, so a run folder is enough to go on from.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from asd import AsdError
from asd.infra.config import Config, load_config
from asd.infra.runs import Run, latest_run

DEFAULT_CONFIG = "config.yml"


def make_parser(
    prog: str, doc: str, *, from_help: str | None = None, overrides: bool = True
) -> argparse.ArgumentParser:
    """A parser with ``--config``, optionally ``--from``, and ``key.sub=value`` overrides."""
    # The module docstring's first line, without reST markup, is the command's description.
    description = doc.strip().splitlines()[0].replace("``", "")
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    p.add_argument(
        "--config",
        default=None,
        help=(
            f"config file (default: the run's own config.yml where a run folder is given, "
            f"else {DEFAULT_CONFIG})"
            if from_help
            else f"config file (default: {DEFAULT_CONFIG})"
        ),
    )
    if from_help:
        p.add_argument("--from", dest="from_run", default=None, help=from_help)
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


def unknown_names(given: Sequence[str], known: Sequence[str], what: str) -> str | None:
    """The message for the names of ``given`` that are not in ``known``, each with the nearest
    known name (difflib, case aside) as a "did you mean"; None when every name is known."""
    by_lower = {name.lower(): name for name in known}
    unknown = [name for name in given if name not in known]
    if not unknown:
        return None
    # Matched case aside, so "Fan" suggests "fan"; the hint names the known spelling.
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
        hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    return f"unknown {what} {', '.join(parts)}; known: {', '.join(known)}"


def names_argument(known: Sequence[str], what: str = "machine type") -> Callable[[str], tuple]:
    """An argparse ``type``: comma- or space-separated names, each one of ``known``."""

    def parse(text: str) -> tuple[str, ...]:
        # Empty parts come from "a, b" and trailing commas; they name nothing.
        names = tuple(part for part in text.replace(" ", ",").split(",") if part)
        message = unknown_names(names, known, what)
        if message:
            raise argparse.ArgumentTypeError(message)
        return names

    return parse


def section_name(text: str) -> str:
    """A section number as the challenge file names spell it (an argparse ``type``): ``0``,
    ``00`` and ``000`` are all section ``00``."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"section {text!r} is not a number such as 00 or 3")
    return f"{int(text):02d}"


def sections_argument(text: str) -> tuple[str, ...]:
    """An argparse ``type``: comma- or space-separated sections (:func:`section_name`)."""
    return tuple(section_name(part) for part in text.replace(" ", ",").split(",") if part)


def load_args_config(args: argparse.Namespace, run: str | Path | None = None) -> Config:
    """``--config`` if given, else ``run``'s ``config.yml`` if there is one, else the default;
    the overrides apply on top in every case."""
    # Commands without overrides (no key.sub=value argument) have none to apply.
    overrides = getattr(args, "overrides", ())
    # A run folder carries its own config, so a run folder is enough to go on from.
    if args.config is None and run is not None and Run(run).config.is_file():
        return load_config(Run(run).config, overrides)
    return load_config(args.config or DEFAULT_CONFIG, overrides)


def _print_warning_once(seen: set):
    """A ``warnings.showwarning`` that prints each message once, as one line: without the file,
    line and source line Python adds, which say nothing to a user."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"warning: {message}"
        if text not in seen:
            seen.add(text)
            print(text, file=sys.stderr)

    return show


def run_command(
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv``, call ``main(args)`` and return its exit status; a ``KeyboardInterrupt``
    raised with a message (e.g. how to resume) prints that message."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Errors a user can fix print one line, not a traceback.
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning_once(set())
            return main(args) or 0
    except (AsdError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    # An interrupt may carry how to go on (e.g. how to resume); print it with the line.
    except KeyboardInterrupt as err:
        detail = f" {err}" if str(err) else ""
        print(f"{parser.prog}: interrupted{detail}", file=sys.stderr)
        return 130


def load_run(args: argparse.Namespace, kind: str = "stage2") -> tuple[Path, Config]:
    """The finished run of ``--from`` (default: the latest finished ``*-<kind>`` run of the
    config's ``runs.dir``) and the config to use with it (``load_args_config``)."""
    if args.from_run:
        run = Run.open_finished(args.from_run)
    else:
        run = Run.open_finished(latest_run(load_args_config(args).runs.dir, kind))
    return run.path, load_args_config(args, run.path)
