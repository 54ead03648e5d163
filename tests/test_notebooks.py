"""The notebooks and ``python -m asd.notebooks``.

Fast tests check the committed notebooks (no outputs, one parameter cell, runs read only through
``asd``, whose views tests/test_runview.py checks). The slow ones execute notebooks with
``python -m asd.notebooks`` against a copy of the session's tiny run (Step 1, Step 2, submit),
evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from helpers import copy_run

from asd import evaluate
from asd import notebooks as nbs

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]-*.ipynb"))


# ---------------------------------------------------------------------------- the notebooks


def test_there_are_four_numbered_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01-training.ipynb",
        "02-embeddings.ipynb",
        "03-scores.ipynb",
        "04-errors.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameter_cell_and_reads_runs_through_asd(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert re.search(r"^RUN = None\b", tagged[0].source, re.M)
    assert re.search(r"^CONFIG = ", tagged[0].source, re.M)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for direct in ("read_csv", "np.load", "torch.load", "open(", "glob("):
        assert direct not in code, f"{path.name} reads files itself ({direct}); use asd.runview"
    assert "from asd import" in code and "runview" in code


def test_inject_parameters_goes_right_after_the_parameter_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell("RUN = None"),
        nbformat.v4.new_code_cell("print(RUN)"),
    ]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbs.inject_parameters(nb, {"RUN": "/x/001-stage2", "CONFIG": "c.yml"})
    assert nb.cells[2].source.splitlines()[1:] == ["RUN = '/x/001-stage2'", "CONFIG = 'c.yml'"]
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    nb.cells[1].metadata["tags"] = []
    with pytest.raises(nbs.NotebookError, match="exactly one cell tagged 'parameters'"):
        nbs.inject_parameters(nb, {"RUN": "r"})


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def trained(runs, tmp_path):
    """A copy of the session's tiny run (trained and submitted by the project's own entry
    points), evaluated."""
    run2 = copy_run(runs.stage2, tmp_path)  # beside a copy of its Step 1 run
    assert evaluate.main(["--config", str(runs.config), "--from", str(run2)]) == 0
    return runs.config, run2.parent / runs.stage1.name, run2


@pytest.mark.slow
def test_every_notebook_runs_against_a_tiny_trained_run(trained, capsys):
    config, run1, run2 = trained
    capsys.readouterr()
    # no --config: the run's own config.yml says where its data lives (the repository's
    # config.yml points at data that is not there)
    assert nbs.main(["--from", str(run2)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(run2)
    for path in NOTEBOOKS:
        html = run2 / "notebooks" / f"{path.stem}.html"
        text = html.read_text()
        assert "Traceback" not in text
        assert "runview.open_run" not in text, f"{html.name} shows its code cells"
        figures = re.findall("data:image/(?:png|jpeg);base64,", text)
        assert len(figures) >= 2, f"{html.name} shows no figures"
    assert not list((run2 / "notebooks").glob(".*.tmp"))
    errors_page = (run2 / "notebooks" / "04-errors.html").read_text()
    assert 'src="data:audio/mpeg;base64,' in errors_page  # MP3 players, not large WAVs
    scores_page = (run2 / "notebooks" / "03-scores.html").read_text()
    for shown in ("intended", "simple reference", "published", "REAL development data"):
        assert shown in scores_page
    for path in NOTEBOOKS:  # executing never writes outputs into the committed files
        assert all(c.get("outputs", []) == [] for c in nbformat.read(path, 4).cells)


@pytest.mark.slow
def test_a_failing_cell_fails_the_command_and_keeps_the_html(runs, tmp_path, capsys):
    config, run2 = runs.config, copy_run(runs.stage2, tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("RUN = None"),
        nbformat.v4.new_code_cell("raise ValueError('boom in ' + RUN)"),
    ]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "09-broken.ipynb"
    nbformat.write(nb, path)
    assert nbs.main(["--config", str(config), "--from", str(run2), "--notebooks", str(path)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run2)
    assert "boom in " + str(run2.resolve()) in (run2 / "notebooks" / "09-broken.html").read_text()
