"""`make evaluate` says loudly what it could not score: eval sections without ground truth."""

from __future__ import annotations

import shutil

from robust_helpers import cli, write_config

from asd.evaluate import missing_ground_truth
from asd.infra.config import load_config
from asd.infra.data import ground_truth_dir


def test_missing_ground_truth_names_the_folder_and_the_command(tmp_path):
    assert missing_ground_truth(tmp_path) is None  # no eval data: nothing to say
    test = tmp_path / "eval_data" / "fan" / "source_test"
    test.mkdir(parents=True)
    (test / "section_03_source_test_0000.wav").write_bytes(b"")
    message = missing_ground_truth(tmp_path)
    assert str(ground_truth_dir(tmp_path)) in message and "make data" in message
    ground_truth_dir(tmp_path).mkdir()
    (ground_truth_dir(tmp_path) / "ground_truth_fan_section_03_source_test.csv").write_text("")
    assert missing_ground_truth(tmp_path) is None


def test_evaluate_without_eval_ground_truth(runs, tiny_cfg, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_cfg.data.root, root, ignore=shutil.ignore_patterns("ground_truth"))
    run = tmp_path / "run"
    shutil.copytree(runs.stage2, run)  # the shared run stays as it is
    config = write_config(
        load_config(runs.config),
        tmp_path / "config.yml",
        [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    out = cli("asd.evaluate", "--config", config, "--from", run, "--no-figures", check=True)
    warning = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and str(ground_truth_dir(root)) in warning[0]
    assert "make data" in warning[0]
    assert "eval_data: absent" in out.stdout and "dev_data: harmonic means" in out.stdout
    assert "absent: no evaluation ground truth" in (run / "results.md").read_text()
