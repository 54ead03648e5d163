"""The run folder's owner (asd.infra.runs.Run): no other module spells a run file's name; the
chain, finished, the next number, resume; submitted runs are never rewritten for other data."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import snapshot

from asd import evaluate as ev
from asd import score as sc
from asd import submit as sm
from asd.infra.checkpoint import load_checkpoint, save_checkpoint
from asd.infra.cli import load_run
from asd.infra.config import ConfigError
from asd.infra.data import class_table, save_classes
from asd.infra.feature_cache import build_cache
from asd.infra.runs import Run, latest_run, list_runs, trim_log
from asd.infra.training import prepare, resume_line
from asd.method.model import build_model
from asd.method.steps import STEP1, STEP2, Schedule
from runners import stage1, stage2

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- no other owner


def run_file_names() -> tuple[set[str], set[str]]:
    """(file names, folder names) of everything a Run names, as Run itself spells them."""
    run = Run(Path("RUN"))
    paths = [
        getattr(run, name)
        for name, member in vars(Run).items()
        if isinstance(member, property) and isinstance(getattr(run, name), Path)
    ]
    parts = {part for path in paths for part in path.relative_to("RUN").parts}
    return {p for p in parts if "." in p}, {p for p in parts if "." not in p}


# Where a run file's name may appear outside asd/infra/runs.py, with why: the project's own
# config file (the default of --config) has the name a run's copy of it has.
ELSEWHERE = {
    "asd/infra/config.py": {"config.yml"},  # load_config's default: the project's config
    "asd/infra/cli.py": {"config.yml"},  # DEFAULT_CONFIG: the project's config
    "asd/index.py": {"config.yml"},  # the project's config
    "bench/embed.py": {"config.yml"},  # the project's config
    "bench/scale.py": {"config.yml", "logs"},  # the project's config; the bench's own logs
}


def _repository_path(node: ast.AST) -> bool:
    """Whether ``node`` is a path into the repository (REPO, or made from ``__file__``)."""
    return any(isinstance(n, ast.Name) and n.id in ("REPO", "__file__") for n in ast.walk(node))


def _joined(tree: ast.AST) -> tuple[set[int], set[int]]:
    """id() of every string constant used as a path part (right of ``/``, an argument of
    os.path.join / joinpath / Path), and of those that name a path in the repository (right
    of ``REPO /`` or of a path made from ``__file__``)."""
    parts, repository = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts.add(id(node.right))
            if _repository_path(node.left):
                repository.add(id(node.right))
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith(("path.join", "joinpath")) or name == "Path":
                parts.update(id(a) for a in node.args)
    return parts, repository


def _docstrings(tree: ast.AST) -> set[int]:
    """id() of every string that is a statement of its own (docstrings, attribute notes)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def spelled_run_files(source: str, allowed: set[str] = frozenset()) -> list[tuple[int, str]]:
    """(line, name) of each run file or folder name ``source`` spells as a path, outside
    docstrings and comments: a file name anywhere in a string, a folder name as a path part
    or beside a slash."""
    files, folders = run_file_names()
    tree = ast.parse(source)
    joined, repository = _joined(tree)
    skip = _docstrings(tree) | repository
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in skip:
            continue
        text = node.value
        for name in sorted((files | folders) - allowed):
            as_file = name in files and re.search(rf"(?<![\w.-]){re.escape(name)}(?!\w)", text)
            as_part = name in folders and (
                (id(node) in joined and text == name)
                or re.search(rf"(^|/){re.escape(name)}/|/{re.escape(name)}($|\W)", text)
            )
            if as_file or as_part:
                found.append((node.lineno, name))
    return sorted(found)


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one module (IPython magics left out)."""
    cells = json.loads(path.read_text())["cells"]
    lines = [
        line
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if not line.lstrip().startswith(("%", "!"))
    ]
    return "\n".join(lines)


def test_the_checker_finds_run_file_names_spelled_as_paths():
    spelled = spelled_run_files(
        '"""A docstring may name RUN/model.pth."""\n'
        'a = run / "model.pth"\n'
        'b = run / "submission" / name\n'
        'c = f"{run}/figures/roc.png"\n'
        'd = os.path.join(run, "checkpoints")\n'
        'e = {"checkpoints": 1, "detectors": 2}  # keys, not paths\n'
        'f = REPO / "notebooks"\n'
        'g = "cannot read scores.csv"\n'
    )
    assert spelled == [(2, "model.pth"), (3, "submission"), (4, "figures"), (5, "checkpoints"),
                       (8, "scores.csv")]  # fmt: skip


def test_no_run_file_name_is_spelled_outside_the_run_owner():
    sources = [
        p for folder in ("asd", "runners", "bench") for p in sorted((REPO / folder).rglob("*.py"))
    ]
    sources.remove(REPO / "asd" / "infra" / "runs.py")
    found = []
    for path in sources:
        name = path.relative_to(REPO).as_posix()
        spelled = spelled_run_files(path.read_text(), ELSEWHERE.get(name, set()))
        found += [f"{name}:{line}: {file}" for line, file in spelled]
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        spelled = spelled_run_files(notebook_code(path))
        found += [f"{path.relative_to(REPO)} (code line {line}): {file}" for line, file in spelled]
    assert not found, "ask asd.infra.runs.Run for these paths:\n" + "\n".join(found)


def test_the_commands_do_not_borrow_the_submit_commands_names():
    for module in ("runview", "score", "evaluate"):
        source = (REPO / "asd" / f"{module}.py").read_text()
        assert not re.search(r"\b(SUBMISSION|EMBEDDINGS|SCORES|DETECTORS|SubmitError)\b", source)


# ---------------------------------------------------------------------------- Run


def test_names_of_what_a_run_holds():
    run = Run("runs/003-stage2")
    assert (run.name, run.kind, str(run)) == ("003-stage2", "stage2", "runs/003-stage2")
    assert Path(run) == Path("runs/003-stage2")
    named = {
        run.config: "config.yml",
        run.classes: "classes.csv",
        run.model: "model.pth",
        run.init_file: "init.txt",
        run.last_checkpoint: "checkpoints/last.pth",
        run.train_log: "logs/train.csv",
        run.tensorboard: "logs/tensorboard",
        run.embeddings: "embeddings.npz",
        run.detectors: "detectors",
        run.submission: "submission",
        run.scores: "scores.csv",
        run.results_csv: "results.csv",
        run.results_md: "results.md",
        run.figures: "figures",
        run.notebooks: "notebooks",
    }
    for path, name in named.items():  # the layout old runs have on disk
        assert path == Path("runs/003-stage2") / name


def test_the_next_number_skips_gaps_and_other_folders(tiny_cfg, tmp_path):
    runs = tmp_path / "runs"
    for name in ("001-stage1", "002-stage2", "007-stage1", "notes", "x-stage1"):
        (runs / name).mkdir(parents=True)
    (runs / "010-stage2.txt").write_text("a file, not a run")
    cfg = tiny_cfg.replace(**{"runs.dir": str(runs)})
    run = Run.create(cfg, "stage2")
    assert run.name == "008-stage2" and run.config.is_file()
    assert [p.name for p in list_runs(runs, "stage2")] == ["002-stage2", "008-stage2"]
    assert Run.create(cfg, "stage1").name == "009-stage1"


def test_finished_and_the_latest_run(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp_path)})
    old, new = Run.create(cfg, "stage1"), Run.create(cfg, "stage1")
    assert not old.is_finished()
    with pytest.raises(ConfigError, match=re.escape(f"finish it with make stage1 RESUME={old}")):
        Run.open_finished(old.path)
    old.model.write_bytes(b"weights")
    assert old.is_finished() and Run.open_finished(old.path) == old
    with caplog.at_level(logging.WARNING):
        assert latest_run(tmp_path, "stage1") == old.path
    assert new.name in caplog.text  # the newer unfinished run is named
    assert latest_run(tmp_path, "stage1", finished=False) == new.path


def test_a_missing_folder_is_reported_as_missing(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"^no such folder: {missing}$"):
        Run.open(missing)
    with pytest.raises(ConfigError, match="is not a run folder"):
        Run.open(tmp_path)
    args = argparse.Namespace(from_run=str(missing), config=None, overrides=[])
    with pytest.raises(ConfigError, match="no such folder"):
        load_run(args)
    for main in (stage1.main, stage2.main):
        assert main(["--resume", str(missing)]) == 2
        assert capsys.readouterr().err == f"python -m runners.{main.__module__.split('.')[-1]}: " \
            f"error: no such folder: {missing}\n"  # fmt: skip
    assert sm.main(["--from", str(missing)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"no such folder: {missing}")


def _stage_pair(tmp_path: Path) -> tuple[Run, Run]:
    """A Step 1 run and a Step 2 run with files enough to be a chain."""
    one, two = Run(tmp_path / "runs" / "001-stage1"), Run(tmp_path / "runs" / "002-stage2")
    for run in (one, two):
        run.path.mkdir(parents=True)
        run.config.write_text("{}\n")
    one.model.write_bytes(b"weights")
    return one, two


def test_the_chain_of_a_step2_run_through_any_init_txt(tmp_path):
    one, two = _stage_pair(tmp_path)
    two.write_init(one.model)
    assert two.init_file.read_text() == "../001-stage1/model.pth\n"  # relative to the run
    assert [r.path.resolve() for r in two.chain()] == [one.path, two.path]
    assert one.chain() == [one] and one.init() is None
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "runs", moved)  # a relative name holds where the runs go
    assert [r.name for r in Run(moved / two.name).chain()] == [one.name, two.name]
    two = Run(moved / two.name)
    for older in (f"{one.name}/model.pth", str(moved / one.name / "model.pth")):
        two.init_file.write_text(older + "\n")  # relative to the runs folder, or absolute
        assert [r.path.resolve() for r in two.chain()] == [moved / one.name, two.path]


def test_a_broken_chain_says_what_is_wrong(tmp_path):
    one, two = _stage_pair(tmp_path)
    two.init_file.write_text(f"{tmp_path / 'gone' / 'model.pth'}\n")
    with pytest.raises(ConfigError, match="init.txt names .*gone.*moved or deleted"):
        two.chain()
    two.model.write_bytes(b"weights")
    one.write_init(two.model)
    two.write_init(one.model)
    with pytest.raises(ConfigError, match="in a loop"):
        two.chain()


# ---------------------------------------------------------------------------- the step contract


def test_the_schedules_of_both_steps(tiny_cfg):
    cfg = tiny_cfg.replace(
        **{
            "stage1.epochs": 4,
            "stage1.batch_size": 8,
            "stage1.checkpoint_every": 2,
            "stage2.iterations": 7,
            "stage2.log_every": 2,
            "stage2.checkpoint_every": 4,
        }
    )
    assert STEP1.schedule(cfg, n_source=20) == Schedule(
        epochs=4, iterations_per_epoch=3, iterations=12, checkpoint_every=2
    )
    assert STEP2.schedule(cfg, n_source=20) == Schedule(
        epochs=4, iterations_per_epoch=2, iterations=7, checkpoint_every=2
    )
    assert STEP1.trainable(cfg) is None and STEP2.trainable(cfg) == cfg.stage2.trainable
    assert (STEP1.domains, STEP2.domains) == (("source", "source"), ("source", "target"))


def test_both_sides_read_one_contract():
    assert stage1.Stage1.spec is STEP1 and stage2.Stage2.spec is STEP2
    for module in ("asd/infra/training.py", "runners/common.py"):
        source = (REPO / module).read_text()
        assert not re.search(r"kind\.(name|domains)\b|schedule\(\)\[", source), module


# ---------------------------------------------------------------------------- resume


@pytest.fixture
def tiny(tiny_cfg, tmp_path):
    return tiny_cfg.replace(**{"runs.dir": str(tmp_path / "runs")})


def interrupted_run(cfg, progress: dict | None, key: str = "progress") -> Run:
    """A Step 1 run stopped after ``progress`` (None: before its first checkpoint), with a log
    row per epoch 1..3; ``key``: the name the checkpoint gives its progress."""
    classes = class_table(build_cache(cfg, progress=False).index)
    run = Run.create(cfg, "stage1")
    save_classes(classes, run.classes)
    run.logs.mkdir()
    run.train_log.write_text("step,loss\n1,3.0\n2,2.0\n3,1.")
    if progress is not None:
        model, head = build_model(cfg, len(classes))
        save_checkpoint(
            run.last_checkpoint,
            model=model,
            head=head,
            cfg=cfg,
            classes=classes,
            mean=torch.zeros(cfg.features.n_mels),
            std=torch.ones(cfg.features.n_mels),
            progress=progress,
        )
        if key != "progress":  # as checkpoints written before the rename have it
            data = torch.load(run.last_checkpoint, weights_only=True)
            data[key] = data.pop("progress")
            torch.save(data, run.last_checkpoint)
    (run.checkpoints / ".last.pth.1234.tmp").parent.mkdir(exist_ok=True)
    (run.checkpoints / ".last.pth.1234.tmp").write_bytes(b"half")  # a killed writer's
    return run


def resume(run: Run, caplog):
    args = argparse.Namespace(resume=str(run), overrides=[], no_progress=True, config=None)
    with caplog.at_level(logging.INFO, logger="asd.infra.training"):
        return prepare(stage1.Stage1, args)


def test_resume_before_the_first_checkpoint_says_it_starts_again(tiny, caplog):
    run = interrupted_run(tiny, None)
    path, step = resume(run, caplog)
    assert path == run.path and step.resume
    assert f"{run}: no checkpoint yet: starting again" in caplog.text
    assert run.train_log.read_text() == "step,loss\n"
    assert not list(run.checkpoints.iterdir())


@pytest.mark.parametrize("key", ["progress", "step"])
def test_resume_says_where_it_goes_on(tiny, caplog, key):
    progress = {"stage": "stage1", "epoch": 1, "iteration": 6, "samples": 48, "done": False}
    run = interrupted_run(tiny, progress, key)
    assert run.resume_checkpoint()["progress"] == progress  # an older file's "step" too
    _, step = resume(run, caplog)
    assert step is not None and f"{run}: resuming at epoch 2 of 3" in caplog.text
    assert run.train_log.read_text() == "step,loss\n1,3.0\n"
    assert not run.is_finished()


def test_resume_of_a_run_whose_every_epoch_was_done_writes_its_model(tiny, caplog):
    progress = {"stage": "stage1", "epoch": 3, "iteration": 18, "samples": 144, "done": True}
    run = interrupted_run(tiny, progress)
    _, step = resume(run, caplog)
    assert step is None and f"{run}: all 3 epochs were done; wrote model.pth" in caplog.text
    assert load_checkpoint(run.model)["progress"] == progress


def test_resume_refuses_a_checkpoint_of_other_settings(tiny, caplog):
    progress = {"stage": "stage1", "epoch": 1, "iteration": 6, "samples": 48, "done": False}
    run = interrupted_run(tiny, progress)
    run.config.write_text(run.config.read_text().replace("epochs: 3", "epochs: 5"))
    with pytest.raises(ConfigError, match=r"stage1.epochs: checkpoint 3, config.yml 5"):
        resume(run, caplog)
    assert run.train_log.read_text().endswith("3,1.")  # nothing changed


def test_resume_lines_of_step2(tiny):
    progress = {"epoch": 2, "iteration": 40, "done": False}
    assert resume_line(STEP2, tiny, progress, Run("r")) == (
        f"resuming at iteration 41 of {tiny.stage2.iterations}"
    )
    assert resume_line(STEP2, tiny, None, Run("r")) == "no checkpoint yet: starting again"


def test_trim_log_keeps_complete_rows_up_to_the_epoch(tmp_path):
    log = tmp_path / "train.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")  # the last row cut mid-write
    trim_log(log, 2)
    assert log.read_text() == "step,loss\n1,0.5\n2,0.4\n"


# ---------------------------------------------------------------------------- other data


@pytest.fixture(scope="module")
def submitted(tiny_cfg, tmp_path_factory):
    """A random tiny model as a finished Step 2 run, submitted for the tiny data root."""
    cfg = tiny_cfg.replace(**{"runs.dir": str(tmp_path_factory.mktemp("runs"))})
    classes = class_table(build_cache(cfg, progress=False).index)
    run = Run.create(cfg, "stage2")
    save_classes(classes, run.classes)
    model, head = build_model(cfg, len(classes))
    stats = {"mean": torch.zeros(cfg.features.n_mels), "std": torch.ones(cfg.features.n_mels)}
    save_checkpoint(
        run.model, model=model, head=head, cfg=cfg, classes=classes, progress={}, **stats
    )
    sm.submit(cfg, run.path, device="cpu")
    ev.evaluate(cfg, run.path, figures=False)
    return cfg, run


def one_machine_root(cfg, folder: Path) -> Path:
    """A copy of the tiny data root with one machine (fan) only."""
    for dataset in ("dev_data", "eval_data"):
        shutil.copytree(Path(cfg.data.root) / dataset / "fan", folder / dataset / "fan")
    return folder


def test_the_record_of_what_was_submitted(submitted):
    cfg, run = submitted
    data = run.read_submitted_data()
    assert data.root == str(Path(cfg.data.root).resolve())
    machines = {machine for _, machine, _ in data.sections}
    assert machines == {"fan", "valve"} and ("eval_data", "valve", "03") in data.sections
    assert data.clips == 48  # 2 machines x 2 sections x 2 domains x 6 test clips


def test_submit_for_another_data_root_is_refused_and_the_run_kept(submitted, tmp_path, capsys):
    cfg, run = submitted
    before = snapshot(run.path)
    assert any(name.startswith("submission/") for name in before)
    other = one_machine_root(cfg, tmp_path / "fan_only")
    args = ["--from", str(run), f"data.root={other}", "--device", "cpu"]
    assert sm.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "asd.submit does not rewrite it" in err
    assert f"data root {other}" in err and "docs/robustness.md" in err
    assert ev.main(["--from", str(run), f"data.root={other}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "asd.evaluate does not rewrite it" in err
    assert snapshot(run.path) == before  # byte for byte


def test_the_same_clips_elsewhere_are_the_same_data_and_fewer_are_not(submitted, tmp_path):
    cfg, run = submitted
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.path, copy.path)
    root = tmp_path / "data"
    shutil.copytree(cfg.data.root, root)  # a copied data folder: the same test clips
    here = cfg.replace(**{"data.root": str(root)})
    sm.submit(here, copy.path, device="cpu")
    assert copy.read_submitted_data().root == str(root.resolve())
    for dataset in ("dev_data", "eval_data"):  # the same root, one machine fewer
        shutil.rmtree(root / dataset / "valve")
    before = snapshot(copy.path)
    with pytest.raises(
        ConfigError, match=r"for data root .* \(2 sections of fan, 24 test clips\): "
    ):
        sm.submit(here, copy.path, device="cpu")
    with pytest.raises(ConfigError, match="asd.evaluate does not rewrite it"):
        ev.evaluate(here, copy.path, figures=False)
    assert snapshot(copy.path) == before


def test_a_run_submitted_before_the_record_is_judged_by_its_scores(submitted, tmp_path):
    cfg, run = submitted
    copy = Run(tmp_path / run.name)
    shutil.copytree(run.path, copy.path)
    copy.submitted_data.unlink()
    root = one_machine_root(cfg, tmp_path / "data")
    before = snapshot(copy.path)
    with pytest.raises(ConfigError, match="sections of fan, valve"):
        sm.submit(cfg.replace(**{"data.root": str(root)}), copy.path, device="cpu")
    assert snapshot(copy.path) == before


def test_score_never_writes_into_the_run(submitted, capsys):
    cfg, run = submitted
    before = snapshot(run.path)
    clip = sorted(Path(cfg.data.root).glob("dev_data/fan/*test/*.wav"))[0]
    for target in (run.scores, run.path / "mine.csv"):
        assert sc.main([str(run), str(clip), "--csv", str(target), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "inside the run folder" in err
    assert snapshot(run.path) == before


def test_a_copy_of_the_training_files_can_be_submitted_for_other_data(submitted, tmp_path):
    """The recipe docs/robustness.md gives after a refusal."""
    cfg, run = submitted
    copy = Run(Path(cfg.runs.dir) / f"{run.name}-fan")
    copy.path.mkdir()
    for path in (run.config, run.classes, run.model):
        shutil.copy(path, copy.path / os.path.basename(path))
    root = one_machine_root(cfg, tmp_path / "data")
    sub = sm.submit(cfg.replace(**{"data.root": str(root)}), copy.path, device="cpu")
    assert set(sub.scores["machine"]) == {"fan"}
    assert copy.read_submitted_data().root == str(root.resolve())
    assert latest_run(cfg.runs.dir, "stage2") == run.path  # the copy is not a stage2 run
