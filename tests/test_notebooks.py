"""The notebooks and the read-only run views they use (asd.runview, asd.notebooks).

Fast tests check the committed notebooks (no outputs, one parameter cell, runs read only through
``asd``) and ``asd.runview`` on a submitted run with a random tiny model and hand-written logs.
The slow test trains a tiny run end to end (Step 1, Step 2, submit, evaluate) and executes every
notebook against it with ``python -m asd.notebooks``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from asd import AsdError, runview
from asd import notebooks as nbs
from asd import submit as sm
from asd.infra.checkpoint import save_checkpoint
from asd.infra.config import load_config, save_config
from asd.infra.data import class_table, save_classes
from asd.infra.feature_cache import build_cache
from asd.infra.runs import latest_run, new_run
from asd.method.model import build_model

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]-*.ipynb"))
TINY_MODEL = {
    "model.stem_channels": 4,
    "model.stage_channels": [4, 4, 4, 8],
    "model.embedding_dim": 16,
    "loss.n_subclusters": 4,
}
LOG_HEADER = "step,accuracy,iteration,loss,lr,s,samples_per_s\n"


def write_log(run: Path, rows: list[tuple]) -> None:
    """logs/train.csv as Catalyst's CSV logger writes it: (step, iteration, loss) rows."""
    (run / "logs").mkdir(parents=True, exist_ok=True)
    (run / "logs" / "train.csv").write_text(
        LOG_HEADER
        + "".join(f"{step},0.5,{float(it)},{loss},0.001,5.0,100.0\n" for step, it, loss in rows)
    )


@pytest.fixture(scope="module")
def fake(tiny_cfg, tmp_path_factory):
    """A Step 1 run and a submitted Step 2 run continuing it, with random tiny models."""
    tmp = tmp_path_factory.mktemp("inspect")
    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp / "runs"), **TINY_MODEL})
    save_config(cfg, tmp / "config.yml")
    cache = build_cache(cfg, progress=False)
    classes = class_table(cache.index)
    runs = []
    for kind, seed in (("stage1", 0), ("stage2", 1)):
        run = new_run(cfg, kind)
        save_classes(classes, run / "classes.csv")
        torch.manual_seed(seed)
        model, head = build_model(cfg, len(classes))
        save_checkpoint(
            run / "model.pth",
            model=model,
            head=head,
            cfg=cfg,
            classes=classes,
            mean=cache.mean,
            std=cache.std,
            progress={"iteration": 0},
        )
        runs.append(run)
    run1, run2 = runs
    write_log(run1, [(1, 12, 2.0), (2, 24, 1.5), (3, 36, 1.2)])
    write_log(run2, [(1, 2, 1.4), (2, 4, 1.3)])
    (run2 / "init.txt").write_text(f"{(run1 / 'model.pth').resolve()}\n")
    sub = sm.submit(cfg, run2, device="cpu")
    return cfg, tmp / "config.yml", run1, run2, sub


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


# ---------------------------------------------------------------------------- asd.runview


def test_run_chain_and_its_logs(fake):
    _, config, run1, run2, _ = fake
    assert runview.open_run(None, config)[0] == run2  # the latest stage2 run
    assert runview.run_chain(run2) == [run1, run2]
    assert runview.run_chain(run1) == [run1]
    logs = [runview.read_log(r) for r in runview.run_chain(run2)]
    assert [log["iteration"].tolist() for log in logs] == [[12, 24, 36], [2, 4]]
    assert [log["loss"].tolist() for log in logs] == [[2.0, 1.5, 1.2], [1.4, 1.3]]
    assert {"s", "lr", "samples_per_s", "accuracy"} <= set(logs[0].columns)


@pytest.mark.parametrize("relative_to", ["run", "runs folder"])
def test_run_chain_reads_a_relative_init_txt(fake, tmp_path, relative_to):
    _, _, run1, run2, _ = fake
    runs = tmp_path / "runs"
    for run in (run1, run2):  # a moved runs folder: only relative names still hold
        (runs / run.name).mkdir(parents=True)
        for name in ("config.yml", "model.pth"):
            (runs / run.name / name).write_bytes((run / name).read_bytes())
    name = f"{'../' if relative_to == 'run' else ''}{run1.name}/model.pth"
    (runs / run2.name / "init.txt").write_text(name + "\n")
    chain = runview.run_chain(runs / run2.name)
    assert [p.resolve() for p in chain] == [runs / run1.name, runs / run2.name]


def test_a_resumed_log_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    write_log(tmp_path, [(1, 2, 3.0), (2, 4, 2.0), (2, 4, 1.9), (3, 6, 1.0)])
    log = runview.read_log(tmp_path)
    assert log["step"].tolist() == [1, 2, 3] and log["loss"].tolist() == [3.0, 1.9, 1.0]


def test_missing_files_are_clear_errors(fake, tmp_path):
    *_, run2, _ = fake
    broken = tmp_path / "009-stage2"
    broken.mkdir()
    (broken / "config.yml").write_text((run2 / "config.yml").read_text())
    (broken / "init.txt").write_text(f"{tmp_path / 'gone' / 'model.pth'}\n")
    with pytest.raises(runview.ViewError, match="init.txt names .*gone"):
        runview.run_chain(broken)
    (broken / "init.txt").unlink()
    with pytest.raises(runview.ViewError, match="logs/train.csv does not exist"):
        runview.read_log(broken)
    with pytest.raises(runview.ViewError, match="embeddings.npz does not exist.*asd.submit"):
        runview.embeddings(broken)
    with pytest.raises(runview.ViewError, match="scores.csv does not exist"):
        runview.scores(broken)
    with pytest.raises(AsdError, match="no such folder: .*nowhere"):
        runview.open_run(tmp_path / "nowhere")


def test_embeddings_come_with_their_clips(fake):
    cfg, _, _, run2, _ = fake
    emb = runview.embeddings(run2)
    with np.load(run2 / "embeddings.npz") as z:
        assert np.array_equal(emb.values, z["embeddings"])
        assert list(sm.clip_keys(emb.clips)) == list(z["clips"])
    assert emb.values.shape == (len(emb.clips), 16)
    test = emb.clips[emb.clips["split"] == "test"]
    # evaluation test names carry no label: it comes from eval_data/ground_truth/
    assert test["label"].isin(["normal", "anomaly"]).all()
    assert (emb.clips["class"] >= 0).all()


def test_scores_agree_with_the_submission(fake):
    *_, run2, sub = fake
    table = runview.scores(run2)
    assert list(table.columns) == runview.SCORE_COLUMNS
    expected = sub.scores.sort_values(["dataset", "machine", "section", "domain", "file"])
    assert len(table) == len(expected)
    assert np.allclose(table["score"], expected["score"], rtol=1e-12)
    assert np.allclose(table["threshold"], expected["threshold"])
    assert table["decision"].tolist() == expected["decision"].tolist()
    assert (table["decision"] == (table["score"] > table["threshold"])).all()
    dev = table[table["dataset"] == "dev_data"]
    assert (
        dev["label"] == np.where(dev["file"].str.contains("_anomaly_"), "anomaly", "normal")
    ).all()
    assert table["label"].notna().all() and all(Path(p).is_file() for p in table["path"])


def test_subcluster_centres_follow_the_class_table(fake):
    *_, run2, _ = fake
    centres = runview.subcluster_centres(run2)
    classes = pd.read_csv(run2 / "classes.csv", dtype={"section": str})
    assert centres.values.shape == (4 * len(classes), 16)
    assert centres.table["class"].tolist() == [k // 4 for k in range(len(centres.values))]
    fan = classes.query("machine == 'fan' and section == '00' and domain == 'source'")
    rows = centres.table.eval("machine == 'fan' and section == '00' and domain == 'source'")
    fan = int(fan["class"].iloc[0])
    assert np.array_equal(centres.values[rows.to_numpy()], centres.values[4 * fan : 4 * fan + 4])


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory):
    """A tiny run trained, submitted and evaluated by the project's own entry points."""
    from asd import evaluate
    from runners import stage1, stage2

    tmp = tmp_path_factory.mktemp("notebooks")
    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp / "runs"), **TINY_MODEL})
    config = tmp / "config.yml"
    save_config(cfg, config)
    small = [
        "stage1.epochs=2",
        "stage1.batch_size=8",
        "stage2.iterations=4",
        "stage2.batch_size=8",
        "stage2.log_every=2",
        "stage2.checkpoint_every=2",
    ]
    stage1.main(["--config", str(config), "--no-progress", *small])
    run1 = latest_run(load_config(config).runs.dir, "stage1")
    stage2.main(["--config", str(config), "--no-progress", "--from", str(run1), *small])
    run2 = latest_run(load_config(config).runs.dir, "stage2")
    assert sm.main(["--config", str(config), "--from", str(run2), "--device", "cpu"]) == 0
    assert evaluate.main(["--config", str(config), "--from", str(run2)]) == 0
    return config, run1, run2


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
def test_a_failing_cell_fails_the_command_and_keeps_the_html(fake, tmp_path, capsys):
    _, config, _, run2, _ = fake
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
