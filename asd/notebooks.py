"""Execute the notebooks against a run and write HTML copies into RUN/notebooks/.

``python -m asd.notebooks [--config C] [--from RUN] [key.sub=value ...]`` (``make notebooks``)

Every ``notebooks/NN-*.ipynb`` runs top to bottom in a fresh Jupyter kernel (nbclient) working
in the caller's folder (so relative config paths mean what they mean for ``make``), with ``RUN``,
``CONFIG`` (None: the run's own config.yml) and ``OVERRIDES`` set in a cell placed right after
the cell tagged ``parameters``, as papermill does. Each executed notebook is written atomically
as ``RUN/notebooks/NN-*.html`` (nbconvert; code cells hidden, outputs and errors shown), also
when a cell fails; the command then exits with status 1. The notebook files are never changed.
Prints the run folder last.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from asd import AsdError
from asd.infra.cli import load_run, make_parser, run_command
from asd.infra.data import index_dataset
from asd.infra.io import atomic_path
from asd.infra.runs import Run, submitted_data

log = logging.getLogger(__name__)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class NotebookError(AsdError):
    """A notebook that cannot be run as asked; the message names the file."""


def find_notebooks() -> list[Path]:
    """The project's ``notebooks/NN-*.ipynb``, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def inject_parameters(nb, values: dict, where: str | Path = "notebook"):
    """Insert a cell setting ``values`` right after the cell tagged ``parameters``."""
    import nbformat

    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise NotebookError(
            f"{where}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
        )
    cell = nbformat.v4.new_code_cell(
        "# Parameters injected by asd.notebooks\n"
        + "".join(f"{key} = {value!r}\n" for key, value in values.items())
    )
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def run_notebook(path: Path, values: dict, html: Path, timeout: int = 1200) -> str | None:
    """Execute one notebook and write its HTML copy; returns the error, or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = inject_parameters(nbformat.read(path, as_version=4), values, path)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    )
    paths = (str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH"))  # this checkout's asd
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    try:
        client.execute(env=env)
        error = None
    except Exception as err:  # a failing cell, or a kernel that dies or times out: keep what ran
        error = f"{type(err).__name__}: {err}"
    body, _ = HTMLExporter(exclude_input=True).from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body)
        tmp.chmod(0o644)  # a report to share, not a private temporary file
    return error


def _main(args) -> int:
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's alt-text notes per figure
    run, cfg = load_run(args)  # checks the config and overrides before any kernel starts
    # pages of other data than the submission's would replace the run's own
    advice = "run the notebooks with that data root (drop the data.root override)"
    data = submitted_data(cfg.data.root, index_dataset(cfg.data.root))
    Run(run).check_same_data(data, "asd.notebooks", advice)
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else find_notebooks()
    missing = [p for p in notebooks if not p.is_file()]
    if missing:
        raise NotebookError(f"notebook {missing[0]} does not exist")
    values = {
        "RUN": str(run.resolve()),
        "CONFIG": str(Path(args.config).resolve()) if args.config else None,
        "OVERRIDES": list(args.overrides),
    }
    failed = 0
    for path in notebooks:
        log.info("running %s against %s", path.name, run)
        html = Run(run.resolve()).notebooks / f"{path.stem}.html"
        error = run_notebook(path, values, html, args.timeout)
        if error:
            log.error("%s failed against %s:\n%s", path.name, run, error)
            failed += 1
        print(f"{'FAILED' if error else 'ok':6} {path.name} -> {html}")
    print(run)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "asd.notebooks", __doc__, from_help="run folder (default: the latest finished *-stage2 run)"
    )
    parser.add_argument(
        "--notebooks",
        nargs="*",
        default=None,
        metavar="NOTEBOOK",
        help="only these notebooks (default: every notebooks/NN-*.ipynb)",
    )
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
