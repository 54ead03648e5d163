"""``python -m asd.cache`` (``make cache``): builds or reuses the feature cache of a data root
and prints its folder; the cache itself: tests/test_feature_cache.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from asd.cache import main

SR = 16000


def write(path: Path, y, sr=SR, subtype="PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype=subtype)
    return path


def test_cli_builds_the_cache_and_prints_its_folder(tmp_path, repo, capsys, monkeypatch):
    root = tmp_path / "data"
    rng = np.random.default_rng(3)
    for i in range(3):
        write(
            root / "dev_data" / "fan" / "train" / f"section_00_source_train_normal_{i:04d}.wav",
            0.05 * rng.standard_normal(10 * SR),
        )
    write(
        root / "dev_data" / "fan" / "source_test" / "section_00_source_test_anomaly_0000.wav",
        0.05 * rng.standard_normal(10 * SR),
    )
    monkeypatch.chdir(repo)
    argv = ["data.root=" + str(root), "data.cache_dir=" + str(tmp_path / "cache")]
    assert main(argv) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "cache" and (folder / "settings.json").is_file()
    assert main(argv) == 0  # reused
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(folder)
    assert main(["data.root=" + str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
