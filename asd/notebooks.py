"""Execute the notebooks against a run and keep HTML copies with their outputs in the run.

``python -m asd.notebooks [--config C] [--from RUN] [key.sub=value ...]`` (``make notebooks``)

Every ``notebooks/NN-*.ipynb`` of the repository runs top to bottom in a fresh Jupyter kernel
(nbclient), with ``RUN``, ``CONFIG`` (None: the run's own config.yml) and ``OVERRIDES`` set in
a cell placed right after the cell tagged ``parameters`` (as papermill does); the kernel works
in the caller's folder, so the config's relative paths mean what they mean for ``make``. Each
executed notebook is written as ``RUN/notebooks/NN-*.html`` (nbconvert), atomically; a notebook
whose cell fails is still written (with the error in it), and the command then exits with
status 1. The notebook files themselves are never changed. Prints the run folder last.
"""

from __future__ import annotations

from asd import AsdError

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asd.cli import load_run, make_parser, run_command
from asd.io import atomic_path

log = logging.getLogger(__name__)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
KERNEL = "python3"


class NotebookError(AsdError):
    """A notebook that cannot be run as asked; the message names the file."""


@dataclass
class Outcome:
    notebook: Path
    html: Path
    error: str | None  # None when every cell ran
    executed: Any = None  # the executed notebook (nbformat.NotebookNode)


def find_notebooks(folder: str | Path = NOTEBOOKS) -> list[Path]:
    """``NN-*.ipynb`` files of ``folder``, in order."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("[0-9][0-9]-*.ipynb") if p.is_file())
    if not found:
        raise NotebookError(f"{folder}: no NN-*.ipynb notebooks")
    return found


def inject_parameters(nb, values: dict, where: str | Path = "notebook"):
    """Insert a cell setting ``values`` right after the cell tagged ``parameters``."""
    import nbformat

    tagged = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise NotebookError(f"{where}: expected exactly one cell tagged '{PARAMETERS_TAG}', "
                            f"found {len(tagged)}")
    source = "# Parameters injected by asd.notebooks\n" + "".join(
        f"{key} = {value!r}\n" for key, value in values.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [INJECTED_TAG]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def kernel_env() -> dict:
    """The kernel's environment: this checkout's ``asd`` importable, inline figures."""
    env = dict(os.environ)
    repo = str(NOTEBOOKS.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


def run_notebook(path: str | Path, values: dict, html: str | Path, cwd: str | Path | None = None,
                 timeout: int = 1200) -> Outcome:
    """Execute one notebook with ``values`` injected and write its HTML copy to ``html``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    path, html = Path(path), Path(html)
    nb = inject_parameters(nbformat.read(path, as_version=4), values, path)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(cwd or os.getcwd())}})
    error = None
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as err:
        error = str(err)
    except Exception as err:  # a kernel that dies or times out: still keep what ran
        error = f"{type(err).__name__}: {err}"
    body, _ = HTMLExporter().from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body)
        tmp.chmod(0o644)  # a report to share, not a private temporary file
    return Outcome(notebook=path, html=html, error=error, executed=nb)


def run_all(run: str | Path, config: str | Path | None = None, overrides: list[str] = (),
            notebooks: list[Path] | None = None, timeout: int = 1200) -> list[Outcome]:
    """Run every notebook against ``run`` (read with ``config``, default the run's own, and
    ``overrides``); HTML copies go to ``RUN/notebooks/``."""
    run = Path(run).resolve()
    notebooks = notebooks or find_notebooks()
    values = {"RUN": str(run), "CONFIG": str(Path(config).resolve()) if config else None,
              "OVERRIDES": list(overrides)}
    outcomes = []
    for path in notebooks:
        log.info("running %s against %s", path.name, run)
        outcome = run_notebook(path, values, run / "notebooks" / f"{path.stem}.html",
                               timeout=timeout)
        if outcome.error:
            log.error("%s failed against %s:\n%s", path.name, run, outcome.error)
        outcomes.append(outcome)
    return outcomes


def _main(args) -> int:
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's alt-text notes per figure
    run, _ = load_run(args)  # checks the config and overrides before any kernel starts
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else find_notebooks()
    missing = [p for p in notebooks if not p.is_file()]
    if missing:
        raise NotebookError(f"notebook {missing[0]} does not exist")
    outcomes = run_all(run, args.config, args.overrides, notebooks, timeout=args.timeout)
    failed = [o for o in outcomes if o.error]
    for o in outcomes:
        print(f"{'FAILED' if o.error else 'ok':6} {o.notebook.name} -> {o.html}")
    if failed:
        print(f"{len(failed)} notebook(s) failed; their HTML copies show the error",
              file=sys.stderr)
    print(run)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("asd.notebooks", "Execute the notebooks against a run and write HTML "
                         "copies into RUN/notebooks/; prints the run folder last.",
                         from_help="run folder (default: the latest finished *-stage2 run)")
    parser.add_argument("--notebooks", nargs="*", default=None, metavar="NOTEBOOK",
                        help="only these notebooks (default: every notebooks/NN-*.ipynb)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
