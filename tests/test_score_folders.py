"""asd.score on folders of new recordings: every WAV scored, clips unlike the training data
marked as outside it, warnings printed once without source lines."""

import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from test_score import make_submitted_run

from asd import score as sc
from asd.infra.runs import Run
from asd.method.detectors import POOLED, DetectorSet


@pytest.fixture(scope="module")
def submitted(tiny_cfg, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg.replace(**{"runs.dir": str(runs)})
    return make_submitted_run(cfg)


def test_a_folder_is_every_wav_under_it(submitted, tiny_data, tmp_path, capsys):
    folder = tmp_path / "fan" / "new"
    (folder / "later").mkdir(parents=True)
    train = sorted((tiny_data / "dev_data" / "fan" / "train").glob("section_00_source_*.wav"))
    shutil.copy(train[0], folder / "a.wav")
    shutil.copy(train[1], folder / "later" / "b.WAV")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "scores.csv"
    args = [str(submitted.run), str(folder), "--machine", "fan", "--section", "00"]
    assert sc.main([*args, "--csv", str(out)]) == 0
    table = pd.read_csv(out, dtype={"section": str})
    assert [p.rsplit("/", 1)[1] for p in table["file"]] == ["a.wav", "b.WAV"]
    assert list(table.columns) == sc.COLUMNS
    # no domain in these names: the report's pair scores them with its unknown-domain rule
    assert table["domain"].isna().all() and (table["threshold"] == 0).all()
    assert (table["decision"] == (table["score"] > table["threshold"]).astype(int)).all()
    # training clips lie inside what the run was trained on
    assert (table["outside"] == 0).all()
    assert "0 of 2 recordings lie outside" in capsys.readouterr().out


def test_clips_unlike_the_training_data_are_outside(submitted, tiny_data, tmp_path):
    dets = DetectorSet.load(Run(submitted.run).detectors)
    knn = dets.detectors["fan", "00", POOLED]
    assert np.isfinite(knn.outlier_distance) and knn.outlier_distance > 0
    folder = tmp_path / "fan"
    folder.mkdir()
    rate = 16000
    t = np.arange(10 * rate) / rate
    rng = np.random.default_rng(0)
    sf.write(folder / "loud_noise.wav", rng.uniform(-1, 1, t.size).astype(np.float32), rate)
    sf.write(folder / "whistle.wav", (0.9 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32), rate)
    table = sc.score_files(submitted.run, sc.wav_files([folder]), section="00")
    assert table["machine"].tolist() == ["fan", "fan"]
    # the rule: farther from every training clip than any training clip from its nearest one
    assert (table["outside"] == 1).all()


def test_warnings_print_once_without_source_lines(submitted, tiny_data, tmp_path, capsys):
    clip = next((tiny_data / "dev_data" / "fan" / "train").glob("section_00_source_*.wav"))
    wave, rate = sf.read(clip)
    long = tmp_path / "fan" / "section_00_source_test_normal_0000.wav"
    long.parent.mkdir()
    sf.write(long, np.concatenate([wave, wave[: 2 * rate]]), rate)  # 12 s: cropped
    assert sc.main([str(submitted.run), str(long)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cropped" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "warnings.warn" not in err and "load_audio" not in err


def test_missing_or_empty_folders_are_named(submitted, tmp_path, capsys):
    assert sc.main([str(submitted.run), str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert sc.main([str(submitted.run), str(tmp_path / "empty")]) == 2
    assert "a folder without .wav files" in capsys.readouterr().err


def test_the_machine_is_the_folder_above_the_split_folder():
    from asd.score import describe_clip

    assert describe_clip("/d/fan/test/section_00_0000.wav")[:2] == ("fan", "00")
    assert describe_clip("/d/fan/test/anomaly/rec_0000.wav")[0] == "fan"  # plain folders
    assert describe_clip("/d/fan/train/usual/rec_0000.wav")[0] == "fan"
    assert describe_clip("/d/pump/rec.wav")[0] == "pump"  # new recordings: the parent folder
    assert describe_clip("/test/rec.wav")[0] == "test"


def test_two_channel_recordings_take_the_runs_channel_with_one_warning(
    submitted, tiny_data, tmp_path, capsys, monkeypatch
):
    """2026-style files (near and far microphone): the channel of the run's data.channel is
    scored, and a folder of them gives one warning line, not one per file."""
    clip = sorted((tiny_data / "dev_data" / "fan" / "train").glob("section_00_source_*.wav"))[0]
    wave, rate = sf.read(clip, dtype="float32")
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, wave.size).astype(np.float32)
    folder = tmp_path / "fan"
    folder.mkdir()
    for i in range(3):  # the clip in channel 1, noise in channel 0
        name = f"section_00_source_test_normal_{i:04d}.wav"  # the domain as the clip's
        sf.write(folder / name, np.stack([noise, wave], axis=1), rate)
    mono = sc.score_files(submitted.run, [clip], section="00")["score"]
    # the run's config as if it had trained on channel 1
    real_load = sc.load_model

    def channel_1(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.cfg = loaded.cfg.replace(**{"data.channel": 1})
        return loaded

    monkeypatch.setattr(sc, "load_model", channel_1)
    assert sc.main([str(submitted.run), str(folder)]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "channels" in line]
    assert len(said) == 1, err
    assert said[0].startswith("warning: 3 recording(s) were converted")
    assert "2 channels, channel 1 taken (data.channel)" in said[0]
    table = sc.score_files(submitted.run, [folder / name])
    assert table["score"].tolist() == pytest.approx(mono.tolist())
