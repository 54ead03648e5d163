"""Bad configs and run folders made with other settings, through the command lines.

Every case is refused before any work starts, with a non-zero exit status and one message on
stderr that names the file and the key (no traceback):

- a config file with an unknown key, a value of the wrong type or out of range, a missing
  file, an override of a key that does not exist;
- Step 2 ``--from`` a Step 1 run with other feature or model settings (the keys are named),
  trained on other data (no clips of its classes here), or whose classes.csv does not match
  its model.pth; ``--from`` a Step 2 run or an unfinished Step 1 run; ``stage2.trainable``
  naming no part of the model (no run folder is made);
- submit / evaluate with feature settings other than the run's;
- ``--resume`` of a run whose config.yml was edited since its checkpoint (the keys are named;
  engine settings may change), or whose Step 1 model has gone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import cli, copy_run, refused

from asd import cache, evaluate, index, submit
from asd.infra.config import load_config
from runners import stage1, stage2


def edited(path: Path, group: str, key: str, value) -> Path:
    data = yaml.safe_load(path.read_text())
    if value is None:
        del data[group][key]
    else:
        data[group][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def call(main, argv, capsys) -> tuple[int, str]:
    """(exit status, the message) of an entry point's main(); anything but a clean exit fails."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("message"): Python prints it, exit status 1
        code, err = 1, err + code
    code = code or 0
    assert "Traceback" not in err
    return code, err


MAINS = {
    "index": (index.main, []),
    "features": (cache.main, []),
    "stage1": (stage1.main, ["--no-progress"]),
    "stage2": (stage2.main, ["--no-progress"]),
    "submit": (submit.main, ["--device", "cpu"]),
    "evaluate": (evaluate.main, ["--no-figures"]),
}


def bad_configs(config: Path, tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (arguments, words the message must hold)."""

    def copy(name: str, group: str, key: str, value) -> Path:
        return edited(Path(shutil.copy(config, tmp_path / name)), group, key, value)

    unknown = copy("unknown.yml", "stage1", "epochz", 3)
    wrong = copy("wrong.yml", "stage1", "epochs", "ten")
    missing_key = copy("missing_key.yml", "detectors", "ocsvm_nu", None)
    zero = copy("zero.yml", "stage2", "log_every", 0)
    broken = tmp_path / "broken.yml"
    broken.write_text("stage1: [epochs: 3\n")
    return {
        "unknown key": (
            ["--config", unknown],
            [str(unknown), "unknown config key 'stage1.epochz'"],
        ),
        "wrong type": (
            ["--config", wrong],
            [str(wrong), "'stage1.epochs': expected an integer, got 'ten'"],
        ),
        "missing key": (
            ["--config", missing_key],
            [str(missing_key), "missing config key 'detectors.ocsvm_nu'"],
        ),
        "out of range": (
            ["--config", zero],
            [str(zero), "'stage2.log_every': expected a value > 0, got 0"],
        ),
        "missing file": (
            ["--config", tmp_path / "nope.yml"],
            [f"config file {tmp_path / 'nope.yml'} does not exist"],
        ),
        "unknown override": (
            ["--config", config, "stage3.epochs=2"],
            ["override of unknown config key 'stage3.epochs'"],
        ),
        "override type": (
            ["--config", config, "stage1.batch_size=[8]"],
            ["'stage1.batch_size': expected an integer, got [8]"],
        ),
        "not YAML": (["--config", broken], [f"config file {broken} is not valid YAML"]),
    }


def test_bad_configs_in_every_command(config, tmp_path, capsys):
    cases = bad_configs(config, tmp_path)
    for name, (main, extra) in MAINS.items():
        for case, (args, words) in cases.items():
            code, err = call(main, [*args, *extra], capsys)
            assert code == 2, (name, case)
            for w in words:
                assert w in err, (name, case, err)
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.time_pool=50", "model.time_pool=50 exceeds"),
        ("loss.max_angle=2.0", "max_angle must lie in (0, pi/2)"),
        ("engine.name=ddp", "stage1.batch_size=8 does not split over engine.world_size=3"),
    ],
)
def test_settings_a_model_or_engine_refuses_leave_no_run_folder(
    runs, config, tmp_path, override, words, capsys
):
    runs_dir = tmp_path / "fresh-runs"
    code, err = call(
        stage1.main,
        [
            "--config",
            config,
            "--no-progress",
            f"runs.dir={runs_dir}",
            "stage1.batch_size=8",
            "engine.world_size=3",
            override,
        ],
        capsys,
    )
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not runs_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,case",
    [
        ("asd.index", "unknown key"),
        ("asd.cache", "wrong type"),
        ("runners.stage1", "missing file"),
        ("runners.stage2", "unknown override"),
        ("asd.submit", "out of range"),
        ("asd.evaluate", "missing key"),
    ],
)
def test_bad_configs_in_subprocesses(config, tmp_path, module, case):
    args, words = bad_configs(config, tmp_path)[case]
    refused(cli(module, *args), *words)


# ----------------------------------------------------------------------------------------------
# Run folders made with other settings


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.embedding_dim=8", "model.embedding_dim: Step 1 run 16, config 8"),
        ("features.n_mels=64", "features.n_mels: Step 1 run 128, config 64"),
        ("loss.n_subclusters=2", "loss.n_subclusters: Step 1 run 4, config 2"),
    ],
)
def test_step2_from_a_step1_run_with_other_settings(
    runs, config, tmp_path, override, words, capsys
):
    code, err = call(
        stage2.main, ["--config", config, "--from", runs.stage1, "--no-progress", override], capsys
    )
    assert code == 2 and words in err and str(runs.stage1) in err
    assert not (tmp_path / "runs").exists()


def test_step2_from_what_is_not_a_finished_step1_run(runs, config, tmp_path, capsys):
    code, err = call(
        stage2.main, ["--config", config, "--from", runs.stage2, "--no-progress"], capsys
    )
    assert code == 2 and f"{runs.stage2} is not a Step 1 run" in err
    assert len(err.strip().splitlines()) == 1
    unfinished = resumable(runs.stage1, tmp_path)
    code, err = call(
        stage2.main, ["--config", config, "--from", unfinished, "--no-progress"], capsys
    )
    assert (
        code == 2 and f"{unfinished / 'model.pth'} does not exist; the run has not finished" in err
    )
    assert f"make stage1 RESUME={unfinished}" in err
    assert not (tmp_path / "runs").exists()


def test_step2_from_a_run_folder_alone(runs, tmp_path, capsys):
    """No --config: the Step 1 run's own config.yml, with the overrides on top."""
    code, _ = call(
        stage2.main,
        ["--from", runs.stage1, "--no-progress", f"runs.dir={tmp_path / 'runs'}"],
        capsys,
    )
    assert code == 0
    (run,) = (tmp_path / "runs").glob("*-stage2")
    expected = load_config(runs.stage1 / "config.yml", [f"runs.dir={tmp_path / 'runs'}"])
    assert load_config(run / "config.yml") == expected


def test_step2_from_a_step1_run_on_other_data(runs, config, tmp_path, capsys):
    run1 = Path(shutil.copytree(runs.stage1, tmp_path / "run1"))
    classes = pd.read_csv(run1 / "classes.csv", dtype=str)
    classes["machine"] = classes["machine"].map({"fan": "pump", "valve": "slider"})
    classes.to_csv(run1 / "classes.csv", index=False)
    # classes.csv alone edited: it no longer matches the model's
    code, err = call(stage2.main, ["--config", config, "--from", run1, "--no-progress"], capsys)
    assert code == 2 and f"checkpoint {run1 / 'model.pth'} was trained on other classes" in err
    # model and classes both from other machines: no clips of its classes in this data root
    ckpt = torch.load(run1 / "model.pth", weights_only=True)
    ckpt["classes"]["machine"] = list(classes["machine"])
    torch.save(ckpt, run1 / "model.pth")
    code, err = call(stage2.main, ["--config", config, "--from", run1, "--no-progress"], capsys)
    assert code == 2 and "has no source training clips of the run's classes" in err
    assert "pump 00" in err
    refused(
        cli("runners.stage2", "--config", config, "--from", run1, "--no-progress"),
        "has no source training clips",
    )
    assert not (tmp_path / "runs").exists()


def test_step2_trainable_must_name_a_part(runs, config, tmp_path, capsys):
    code, err = call(
        stage2.main,
        ["--config", config, "--from", runs.stage1, "--no-progress", "stage2.trainable=[stage9]"],
        capsys,
    )
    assert code == 2 and "stage2.trainable names ['stage9']" in err
    assert not (tmp_path / "runs").exists()


def test_submit_and_evaluate_with_other_feature_settings(runs, capsys):
    refused(
        cli(
            "asd.submit",
            "--config",
            runs.config,
            "--from",
            runs.stage2,
            "--device",
            "cpu",
            "features.hop_length=256",
        ),
        "features.hop_length: run 512, config 256",
        str(runs.stage2),
    )
    code, err = call(
        evaluate.main,
        ["--config", runs.config, "--from", runs.stage2, "features.fmax=4000"],
        capsys,
    )
    assert code == 2 and "features.fmax: run 8000.0, config 4000.0" in err


def resumable(run: Path, tmp_path: Path) -> Path:
    """A copy of a finished run whose model.pth is gone: --resume would write it."""
    copy = copy_run(run, tmp_path)
    (copy / "model.pth").unlink()
    return copy


@pytest.mark.parametrize(
    "step,group,key,value",
    [
        ("stage1", "model", "embedding_dim", 8),
        ("stage1", "stage1", "batch_size", 16),
        ("stage1", "features", "n_fft", 2048),
        ("stage2", "loss", "n_subclusters", 8),
        ("stage2", "stage2", "lr", 0.01),
    ],
)
def test_resume_of_an_edited_run(runs, tmp_path, step, group, key, value, capsys):
    run = resumable(getattr(runs, step), tmp_path)
    old = load_config(run / "config.yml").to_dict()[group][key]
    edited(run / "config.yml", group, key, value)
    main = stage1.main if step == "stage1" else stage2.main
    code, err = call(main, ["--resume", run, "--no-progress"], capsys)
    assert code == 2 and f"{run / 'config.yml'} differs from the settings" in err
    assert f"{group}.{key}: checkpoint {old!r}, config.yml {value!r}" in err
    assert not (run / "model.pth").exists()


def test_a_moved_runs_folder_still_resumes(runs, tmp_path, capsys):
    """init.txt names the Step 1 model relative to the Step 2 run: the two move together."""
    from asd.runview import run_chain

    assert (runs.stage2 / "init.txt").read_text() == f"../{runs.stage1.name}/model.pth\n"
    run2 = resumable(runs.stage2, tmp_path / "moved" / "runs")
    code, err = call(stage2.main, ["--resume", run2, "--no-progress"], capsys)
    assert code == 0 and (run2 / "model.pth").is_file(), err
    assert [r.resolve() for r in run_chain(run2)] == [run2.parent / runs.stage1.name, run2]


def test_resume_accepts_other_engine_settings(runs, tmp_path, capsys):
    run = resumable(runs.stage1, tmp_path)
    edited(run / "config.yml", "engine", "num_threads", 2)
    code, _ = call(stage1.main, ["--resume", run, "--no-progress"], capsys)
    assert code == 0 and (run / "model.pth").is_file()


def test_resume_without_a_run_takes_the_latest_unfinished_one(runs, config, tmp_path, capsys):
    runs_dir = load_config(config).runs.dir
    run = Path(shutil.copytree(runs.stage1, Path(runs_dir) / "007-stage1"))
    (run / "model.pth").unlink()
    code, err = call(stage1.main, ["--config", config, "--resume", "--no-progress"], capsys)
    assert code == 0 and (run / "model.pth").is_file(), err


def test_resume_of_an_invalid_or_foreign_run(runs, tmp_path, capsys):
    run = resumable(runs.stage1, tmp_path)
    edited(run / "config.yml", "stage1", "epochs", "ten")
    refused(
        cli("runners.stage1", "--resume", run, "--no-progress"),
        str(run / "config.yml"),
        "'stage1.epochs': expected an integer",
    )
    code, err = call(stage1.main, ["--resume", tmp_path, "--no-progress"], capsys)
    assert code == 2 and f"{tmp_path} is not a run folder (no config.yml)" in err
    # Step 2 whose Step 1 model is gone
    run2 = resumable(runs.stage2, tmp_path / "step2")
    (run2 / "checkpoints" / "last.pth").unlink()  # it would start again from the Step 1 model
    gone = tmp_path / "gone" / "model.pth"
    (run2 / "init.txt").write_text(f"{gone}\n")
    code, err = call(stage2.main, ["--resume", run2, "--no-progress"], capsys)
    assert code == 2 and f"checkpoint {gone} does not exist" in err
