"""Execute the notebooks against a run and keep HTML copies with their outputs in the run.

``python -m asd.notebooks [--config C] [--from RUN]`` (``make notebooks FROM=RUN``)

Every ``notebooks/NN-*.ipynb`` of the repository runs top to bottom in a fresh Jupyter kernel
(nbclient), with ``RUN`` and ``CONFIG`` set in a cell placed right after the cell tagged
``parameters`` (as papermill does); the kernel works in the caller's folder, so the config's
relative paths mean what they mean for ``make``. Each executed notebook is written as
``RUN/notebooks/NN-*.html`` (nbconvert), atomically; a notebook whose cell fails is still
written (with the error in it), and the command then exits with status 1. The notebook files
themselves are never changed. Prints the run folder as the last line.
"""

from __future__ import annotations

from asd import AsdError

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asd.config import ConfigError, load_config
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


def run_all(run: str | Path, config: str | Path, notebooks: list[Path] | None = None,
            timeout: int = 1200) -> list[Outcome]:
    """Run every notebook against ``run``; HTML copies go to ``RUN/notebooks/``."""
    run, config = Path(run).resolve(), Path(config).resolve()
    notebooks = notebooks or find_notebooks()
    values = {"RUN": str(run), "CONFIG": str(config)}
    outcomes = []
    for path in notebooks:
        log.info("running %s against %s", path.name, run)
        outcome = run_notebook(path, values, run / "notebooks" / f"{path.stem}.html",
                               timeout=timeout)
        if outcome.error:
            log.error("%s failed against %s:\n%s", path.name, run, outcome.error)
        outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asd.notebooks",
                                     description="Execute the notebooks against a run and write "
                                                 "HTML copies into RUN/notebooks/; prints the run "
                                                 "folder last.")
    parser.add_argument("--config", default="config.yml", help="config file (default: config.yml)")
    parser.add_argument("--from", dest="from_run", default=None,
                        help="run folder (default: the latest *-stage2 run in runs.dir)")
    parser.add_argument("--notebooks", nargs="*", default=None, metavar="NOTEBOOK",
                        help="only these notebooks (default: every notebooks/NN-*.ipynb)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's alt-text notes per figure
    from asd.inspect import InspectError, resolve_run

    try:
        load_config(ns.config)
        run = resolve_run(ns.from_run, ns.config)
        notebooks = [Path(p) for p in ns.notebooks] if ns.notebooks else find_notebooks()
        missing = [p for p in notebooks if not p.is_file()]
        if missing:
            raise NotebookError(f"notebook {missing[0]} does not exist")
        outcomes = run_all(run, ns.config, notebooks, timeout=ns.timeout)
    except (ConfigError, InspectError, NotebookError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    failed = [o for o in outcomes if o.error]
    for o in outcomes:
        print(f"{'FAILED' if o.error else 'ok':6} {o.notebook.name} -> {o.html}")
    if failed:
        print(f"{len(failed)} notebook(s) failed; their HTML copies show the error",
              file=sys.stderr)
    print(run)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
