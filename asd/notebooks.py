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
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asd import AsdError
from asd.infra.cli import load_run, make_parser, run_command
from asd.infra.data import index_dataset
from asd.infra.io import atomic_path
from asd.infra.runs import Run, submitted_data

log = logging.getLogger(__name__)

# The notebooks live beside the package in the checkout, not in the caller's folder.
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
    # The injected cell overrides the defaults of exactly one cell, as papermill does.
    if len(tagged) != 1:
        raise NotebookError(
            f"{where}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
        )
    # repr writes each value as the Python literal that gives it back.
    assignments = "".join(f"{key} = {value!r}\n" for key, value in values.items())
    cell = nbformat.v4.new_code_cell("# Parameters injected by asd.notebooks\n" + assignments)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def run_notebook(path: Path, values: dict, html: Path, timeout: int = 1200) -> str | None:
    """Execute one notebook and write its HTML copy; returns the error, or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    nb = inject_parameters(nbformat.read(path, as_version=4), values, path)
    sockets = tempfile.TemporaryDirectory(prefix="asd-kernel-")
    # The kernel works in the caller's folder, so relative config paths mean what they mean
    # for make.
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": os.getcwd()}},
        # Local sockets instead of TCP: the kernel then has no plain-text network port to warn
        # about; they live in a temporary folder, not in the working directory.
        config=Config({"KernelManager": {"transport": "ipc", "ip": f"{sockets.name}/kernel"}}),
    )
    # The kernel imports this checkout's asd, whatever is installed; figures render inline.
    paths = (str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    try:
        client.execute(env=env)
        error = None
    # A failing cell, or a kernel that dies or times out: the HTML keeps what ran.
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    finally:
        sockets.cleanup()
    body, _ = HTMLExporter(exclude_input=True).from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body)
        # A report to share, not a private temporary file.
        tmp.chmod(0o644)
    return error


def _main(args) -> int:
    # nbconvert notes a missing alt text for every figure; they are not the user's to fix.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    # Checks the config and overrides before any kernel starts.
    run, cfg = load_run(args)
    # Pages of other data than the submission's would replace the run's own.
    advice = "run the notebooks with that data root (drop the data.root override)"
    data = submitted_data(cfg.data.root, index_dataset(cfg.data.root))
    Run(run).check_same_data(data, "asd.notebooks", advice)
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else find_notebooks()
    # A misspelt --notebooks name fails before the first notebook runs.
    missing = [p for p in notebooks if not p.is_file()]
    if missing:
        raise NotebookError(f"notebook {missing[0]} does not exist")
    values = {
        "RUN": str(run.resolve()),
        "CONFIG": str(Path(args.config).resolve()) if args.config else None,
        "OVERRIDES": list(args.overrides),
    }
    pages = [Run(run.resolve()).notebooks / f"{path.stem}.html" for path in notebooks]
    log.info("running %s against %s", ", ".join(p.name for p in notebooks), run)
    # One kernel per notebook, as many at once as there are cores: a kernel spends most of
    # its time starting and importing, one core each. Every notebook runs, even after one
    # fails; the exit status says that one did.
    workers = min(len(notebooks), len(os.sched_getaffinity(0))) or 1
    with ThreadPoolExecutor(workers) as pool:
        errors = pool.map(
            lambda path, html: run_notebook(path, values, html, args.timeout), notebooks, pages
        )
        failed = 0
        for path, html, error in zip(notebooks, pages, errors):
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
