"""Bad and odd audio, names and folders through the entry points, on purpose.

Each case goes through indexing (``python -m asd.index``), the feature cache (``python -m
asd.method.features``) and scoring with a submitted tiny run (``python -m asd.score RUN FILE``), by
their ``main()`` functions (one subprocess per entry point checks exit codes and stderr for
real). Outcomes:

- unusable audio (not a WAV, truncated header or data, empty, no samples, NaN): indexing reads
  names only and lists it; the cache build and scoring stop with exit 2 and a message naming the
  file and the problem; no cache is left that could be used;
- odd but readable audio (stereo, 44.1 kHz, 0.5 s, 12 s, 8-bit, float, all zeros): converted
  with a warning naming the file (none for 8-bit/float, which are plain formats), finite
  features and scores; all-zero audio gives the -100 dB floor everywhere;
- a name outside the scheme: indexing and the cache stop naming the file; scoring asks for
  --section/--domain and works with them;
- a missing or empty root or folder: exit 2 naming the path;
- a root with only dev_data: indexed, cached, submitted and evaluated (dev sections only).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers import cli, refused, write_config

from asd import cache as feat_cli
from asd import index as index_cli
from asd import score as score_cli
from asd.infra.config import load_config
from asd.method.features import AudioWarning

SR = 16000
SLOT = Path("dev_data", "fan", "source_test", "section_00_source_test_normal_0000.wav")

# case -> what the error says (unusable audio)
BAD = {
    "not_wav": "not a readable audio file",
    "truncated_header": "not a readable audio file",
    "truncated_data": "truncated WAV file",
    "empty_file": "not a readable audio file",
    "no_samples": "empty audio file",
    "nan": "audio holds NaN or infinite samples",
}
# case -> the warning (None: read as is, no warning)
ODD = {
    "zeros": "all samples are zero (digital silence)",
    "stereo": "2 channels, channel 0 taken",  # data.channel: 0
    "rate_44k": "sample rate 44100 Hz, resampled to 16000 Hz",
    "short_0.5s": "0.500 s gives 16 frames, zero-padded to 313",
    "long_12s": "12.000 s gives 376 frames, cropped to 313",
    "pcm_u8": None,
    "float": None,
}


def _wav(y: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base_root(tmp_path_factory) -> Path:
    """One machine, dev section 00: 4 source + 1 target training clips, 2 test clips a domain."""
    from asd.synthetic import generate

    return generate(
        tmp_path_factory.mktemp("robust_audio") / "data",
        machines=("fan",),
        dev_sections=("00",),
        eval_sections=(),
        n_source=4,
        n_target=1,
        n_test=2,
        duration=10.0,
        seed=0,
    )


@pytest.fixture(scope="module")
def cases(base_root) -> dict[str, bytes]:
    """Bytes of every case, made from the clip at SLOT."""
    import librosa

    raw = (base_root / SLOT).read_bytes()
    y = sf.read(base_root / SLOT, dtype="float32")[0]
    nan = y.copy()
    nan[1234] = np.nan
    out = {
        "not_wav": b"this is not audio\n" * 50,
        "truncated_header": raw[:30],
        "truncated_data": raw[: len(raw) // 2],
        "empty_file": b"",
        "no_samples": _wav(np.zeros(0, np.float32)),
        "nan": _wav(nan, subtype="FLOAT"),
        "zeros": _wav(np.zeros_like(y)),
        "stereo": _wav(np.stack([y, y], axis=1)),
        "rate_44k": _wav(librosa.resample(y, orig_sr=SR, target_sr=44100), 44100),
        "short_0.5s": _wav(y[: SR // 2]),
        "long_12s": _wav(np.concatenate([y, y[: 2 * SR]])),
        "pcm_u8": _wav(y, subtype="PCM_U8"),
        "float": _wav(y, subtype="FLOAT"),
    }
    assert set(out) == set(BAD) | set(ODD)
    return out


def case_root(base_root: Path, tmp_path: Path, data: bytes | None = None) -> Path:
    """A copy of base_root (hard links) whose SLOT clip holds ``data``."""
    root = tmp_path / "root"
    shutil.copytree(base_root, root, copy_function=os.link)
    if data is not None:
        (root / SLOT).unlink()
        (root / SLOT).write_bytes(data)
    return root


def call(main, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of an entry point's main()."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


@pytest.fixture
def cache_args(runs, tmp_path):
    return ["--config", runs.config, "--workers", "1", f"data.cache_dir={tmp_path / 'cache'}"]


# ----------------------------------------------------------------------------------------------
# Contents of a clip


@pytest.mark.parametrize("name", sorted(BAD))
def test_unusable_audio(name, cases, base_root, runs, cache_args, tmp_path, capsys):
    root = case_root(base_root, tmp_path, cases[name])
    bad = root / SLOT
    code, out, _ = call(index_cli.main, [root], capsys)  # names only: listed like any clip
    assert code == 0 and "9 clips" in out

    code, out, err = call(feat_cli.main, [*cache_args, "--root", root], capsys)
    assert code == 2 and f"error: {bad}: {BAD[name]}" in err, err
    left = [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]
    assert left == []  # nothing usable, nothing half-written

    code, out, err = call(score_cli.main, [runs.stage2, bad], capsys)
    assert code == 2 and f"error: {bad}: {BAD[name]}" in err, err
    assert out == ""


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_readable_audio(name, cases, base_root, runs, cache_args, tmp_path, capsys):
    root = case_root(base_root, tmp_path, cases[name])
    clip = root / SLOT
    code, out, _ = call(index_cli.main, [root], capsys)
    assert code == 0 and "9 clips" in out

    code, out, err = call(feat_cli.main, [*cache_args, "--root", root], capsys)
    if ODD[name] is not None:
        # one warning line (every command prints a warning once, without a source line)
        said = [line for line in err.splitlines() if line.startswith("warning: ")]
        assert len(said) == 1, err
        assert re.search(rf"1 clip\(s\) .*{SLOT.name}: " + re.escape(ODD[name]), said[0])
    assert code == 0, err
    from asd.infra.feature_cache import FeatureCache

    cache = FeatureCache.open(out.strip().splitlines()[-1])
    row = int(np.flatnonzero(cache.index["path"] == str(clip.absolute()))[0])
    x = np.asarray(cache.features[row], dtype=np.float32)  # (T, F)
    assert x.shape == (313, 128) and np.isfinite(x).all()
    if name == "zeros":
        assert (x == -100.0).all()  # 10 log10(amin): the floor, in every frame and band
    if name == "short_0.5s":
        assert (x[20:] == -100.0).all()  # zero-padded: silence after the half second

    if ODD[name] is None:
        code, out, err = call(score_cli.main, [runs.stage2, clip], capsys)
    else:
        # asd.score prints each warning once, as one line without a source line.
        code, out, err = call(score_cli.main, [runs.stage2, clip], capsys)
        said = [line for line in err.splitlines() if ODD[name] in line]
        assert len(said) == 1 and said[0].startswith("warning: "), err
    assert code == 0, err
    assert str(clip) in out
    if name in ("stereo", "float"):  # the same samples as the original clip: the same score
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AudioWarning)
            scores = score_cli.score_files(runs.stage2, [clip, base_root / SLOT])
        assert scores["score"].iloc[0] == scores["score"].iloc[1]


@pytest.mark.slow
def test_entry_points_in_subprocesses(cases, base_root, runs, tmp_path):
    """Exit codes and stderr of the real commands: a clean message, never a traceback."""
    root = case_root(base_root, tmp_path, cases["truncated_data"])
    bad = root / SLOT
    refused(
        cli(
            "asd.cache",
            "--config",
            runs.config,
            "--root",
            root,
            f"data.cache_dir={tmp_path / 'cache'}",
        ),
        str(bad),
        "truncated WAV file",
    )
    refused(cli("asd.score", runs.stage2, bad), str(bad), "truncated WAV file")

    silent = tmp_path / "fan" / "test" / "section_00_source_test_0007.wav"
    silent.parent.mkdir(parents=True)
    silent.write_bytes(cases["zeros"])
    out = cli("asd.score", runs.stage2, silent, check=True)
    assert f"{silent}: all samples are zero (digital silence)" in out.stderr
    assert "Traceback" not in out.stderr
    # the header, the clip's row, and the line counting clips outside the training data
    table = out.stdout.strip().splitlines()
    assert len(table) == 3 and np.isfinite(float(table[1].split()[4]))
    assert "recordings lie outside what the run was trained on" in table[2]


# ----------------------------------------------------------------------------------------------
# Names and folders


def test_name_outside_the_scheme(base_root, runs, cache_args, tmp_path, capsys):
    root = case_root(base_root, tmp_path)
    odd = root / "dev_data" / "fan" / "train" / "fan_recording_01.wav"
    shutil.copy(base_root / SLOT, odd)
    code, _, err = call(index_cli.main, [root], capsys)
    assert code == 2 and f"{odd}: not a DCASE clip name" in err
    code, _, err = call(feat_cli.main, [*cache_args, "--root", root], capsys)
    assert code == 2 and f"{odd}: not a DCASE clip name" in err
    code, _, err = call(score_cli.main, [runs.stage2, odd], capsys)
    assert code == 2 and str(odd) in err and "give --section" in err
    code, out, err = call(
        score_cli.main, [runs.stage2, odd, "--section", "00", "--domain", "source"], capsys
    )
    assert code == 0 and "fan_recording_01.wav" in out


def _without_train_clips(root: Path) -> Path:
    for f in (root / "dev_data" / "fan" / "train").iterdir():
        f.unlink()
    return root / "dev_data" / "fan" / "train"


def _without_train_folder(root: Path) -> Path:
    shutil.rmtree(root / "dev_data" / "fan" / "train")
    return root / "dev_data" / "fan"


def _empty_dev_data(root: Path) -> Path:
    shutil.rmtree(root / "dev_data" / "fan")
    return root


def _empty_root(root: Path) -> Path:
    shutil.rmtree(root / "dev_data")
    return root


def _missing_root(root: Path) -> Path:
    shutil.rmtree(root)
    return root


@pytest.mark.parametrize(
    "make,words",
    [
        (_missing_root, "does not exist"),
        (_empty_root, "expected dev_data/ or eval_data/"),
        (_empty_dev_data, "no .wav files found"),
        (_without_train_folder, "machine folder without a train/ folder"),
        (_without_train_clips, "no .wav files"),
    ],
)
def test_missing_or_empty_folders(make, words, base_root, cache_args, tmp_path, capsys):
    path = make(case_root(base_root, tmp_path))
    root = tmp_path / "root"
    for main, argv in ((index_cli.main, [root]), (feat_cli.main, [*cache_args, "--root", root])):
        code, out, err = call(main, argv, capsys)
        assert code == 2 and str(path) in err and words in err, err


def test_score_missing_file_or_run(runs, base_root, tmp_path, capsys):
    missing = tmp_path / "fan" / "test" / "section_00_source_test_0001.wav"
    code, _, err = call(score_cli.main, [runs.stage2, missing], capsys)
    assert code == 2 and f"{missing}: audio file does not exist" in err
    code, _, err = call(score_cli.main, [tmp_path / "no-run", base_root / SLOT], capsys)
    assert code == 2 and f"no such folder: {tmp_path / 'no-run'}" in err
    empty = tmp_path / "empty-run"
    empty.mkdir()
    code, _, err = call(score_cli.main, [empty, base_root / SLOT], capsys)
    assert code == 2 and str(empty / "detectors") in err and "asd.submit" in err


def test_root_with_only_dev_data(base_root, runs, tmp_path, capsys):
    """Indexed, cached, submitted and evaluated: dev sections only."""
    from asd import evaluate, submit

    root = case_root(base_root, tmp_path)
    assert not (root / "eval_data").exists()
    code, out, _ = call(index_cli.main, [root], capsys)
    assert code == 0 and "9 clips" in out and "eval_data" not in out
    # A copy of the shared run's training files only: a submitted run is never rewritten for
    # other data (docs/robustness.md), so this one is submitted afresh for the dev-only root.
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yml", "classes.csv", "model.pth"):
        shutil.copy(runs.stage2 / name, run / name)
    config = write_config(
        load_config(runs.config),
        tmp_path / "config.yml",
        [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    code, out, err = call(
        submit.main, ["--config", config, "--from", run, "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(run)
    names = sorted(p.name for p in (run / "submission").iterdir())
    assert names == sorted(
        f"{kind}_fan_section_00_{d}_test.csv"
        for kind in ("anomaly_score", "decision_result")
        for d in ("source", "target")
    )
    rows = pd.read_csv(run / "submission" / names[0], header=None)
    assert len(rows) == 2 and np.isfinite(rows[1]).all()
    code, out, err = call(
        evaluate.main, ["--config", config, "--from", run, "--no-figures"], capsys
    )
    assert code == 0, err
    assert set(pd.read_csv(run / "results.csv")["dataset"]) == {"dev_data"}
