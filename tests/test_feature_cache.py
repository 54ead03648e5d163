"""The on-disk log-mel cache (asd.infra.feature_cache): contents, reuse, rebuilds, interrupted
builds, statistics; its command, ``python -m asd.cache``: tests/test_cache.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import asd.infra.feature_cache
import asd.method.features
from asd.infra.config import load_config
from asd.infra.data import index_dataset
from asd.infra.feature_cache import CacheError, FeatureCache, build_cache, cache_folder
from asd.method.features import AudioError, log_mel

SR = 16000


def write_clip(path: Path, seed: int, seconds: float = 10.0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    y = 0.05 * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * (100 + 20 * seed) * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, SR, subtype="PCM_16")
    return path


def make_root(root: Path) -> Path:
    """Two machines in the 2021 layout: 3 source + 1 target training clips, 2 test clips each."""
    seed = 0
    for machine in ("fan", "valve"):
        base = root / "dev_data" / machine
        names = [f"train/section_00_source_train_normal_{i:04d}_a_{i}.wav" for i in range(3)]
        names += [
            "train/section_00_target_train_normal_0000_a_9.wav",
            "source_test/section_00_source_test_normal_0000.wav",
            "target_test/section_00_target_test_anomaly_0000.wav",
        ]
        for name in names:
            write_clip(base / name, seed)
            seed += 1
    return root


@pytest.fixture
def cfg(repo, tmp_path):
    root = make_root(tmp_path / "data")
    return load_config(
        repo / "config.yml", [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    )


def count_decodes(monkeypatch) -> list:
    calls = []
    real = asd.infra.feature_cache.read_audio

    def counting(path, fc, *channel):
        calls.append(path)
        return real(path, fc, *channel)

    monkeypatch.setattr(asd.infra.feature_cache, "read_audio", counting)
    return calls


def temporaries(cfg) -> list[str]:
    """What a build leaves in cache_dir besides complete cache folders and their lock files."""
    return sorted(
        p.name
        for p in Path(cfg.data.cache_dir).iterdir()
        if not p.name.endswith(".lock") and not (p / "settings.json").is_file()
    )


def test_build_contents_match_log_mel_and_index(cfg):
    cache = build_cache(cfg, progress=False, workers=1, chunk_size=5)
    n = 12
    assert cache.path == cache_folder(cfg) and cache.path.parent == Path(cfg.data.cache_dir)
    assert cache.path.name.startswith("data-")
    assert cache.features.shape == (n, 313, 128) and cache.features.dtype == np.float16
    assert isinstance(cache.features, np.memmap) and not cache.features.flags.writeable
    pd.testing.assert_frame_equal(cache.index, index_dataset(cfg.data.root), check_dtype=False)
    assert cache.index["label"].map(lambda v: v in ("normal", "anomaly")).all()
    assert cache.index["section"].tolist() == ["00"] * n
    singles = []
    for i, path in enumerate(cache.index["path"]):
        feats = log_mel(asd.method.features.load_audio(path, cfg.features), SR, cfg.features)
        np.testing.assert_allclose(cache.features[i].astype(np.float32), feats, atol=0.04)
        singles.append(feats)
    train = np.concatenate([f for f, s in zip(singles, cache.index["split"]) if s == "train"])
    np.testing.assert_allclose(cache.mean, train.mean(axis=0, dtype=np.float64), atol=1e-4)
    np.testing.assert_allclose(cache.std, train.std(axis=0, dtype=np.float64), rtol=1e-4)
    assert cache.mean.dtype == cache.std.dtype == np.float32
    settings = json.loads((cache.path / "settings.json").read_text())
    assert settings["complete"] is True and settings["clips"] == n
    assert settings["features"]["n_mels"] == 128
    assert sorted(p.name for p in cache.path.iterdir()) == [
        "features.npy",
        "index.csv",
        "settings.json",
        "stats.npz",
    ]
    assert temporaries(cfg) == []


def test_worker_processes_give_the_same_bytes_as_one(cfg, tmp_path):
    one = build_cache(cfg, progress=False, workers=1, chunk_size=2)
    other = cfg.replace(**{"data.cache_dir": str(tmp_path / "cache2")})
    two = build_cache(other, progress=False, workers=2, chunk_size=2)
    np.testing.assert_array_equal(one.features, two.features)
    # chunk statistics merge in row order, whichever worker finished first: the same bits
    np.testing.assert_array_equal(one.mean, two.mean)
    np.testing.assert_array_equal(one.std, two.std)
    third = cfg.replace(**{"data.cache_dir": str(tmp_path / "cache3")})
    other_chunks = build_cache(third, progress=False, workers=2, chunk_size=5)
    np.testing.assert_allclose(one.mean, other_chunks.mean, rtol=1e-6)
    np.testing.assert_allclose(one.std, other_chunks.std, rtol=1e-6)


_PARENT = os.getpid()
_REAL_EXTRACT_CHUNK = asd.infra.feature_cache._extract_chunk


def _dies_in_a_worker(*args):  # module level: the process pool pickles it by name
    if os.getpid() != _PARENT:  # in a forked worker: gone, as if killed for memory
        os._exit(9)
    return _REAL_EXTRACT_CHUNK(*args)


def test_a_dying_worker_process_fails_the_build_and_keeps_nothing(cfg, monkeypatch):
    real = asd.infra.feature_cache._extract_chunk
    monkeypatch.setattr(asd.infra.feature_cache, "_extract_chunk", _dies_in_a_worker)
    with pytest.raises(CacheError, match="worker process died.*nothing is kept"):
        build_cache(cfg, progress=False, workers=2, chunk_size=2)
    assert not cache_folder(cfg).exists() and temporaries(cfg) == []
    monkeypatch.setattr(asd.infra.feature_cache, "_extract_chunk", real)
    assert len(build_cache(cfg, progress=False, workers=2)) == 12


def test_second_build_reuses_without_decoding(cfg, monkeypatch):
    first = build_cache(cfg, progress=False, workers=1)
    calls = count_decodes(monkeypatch)
    again = build_cache(cfg, progress=False, workers=1)
    assert calls == [] and again.path == first.path
    np.testing.assert_array_equal(again.features, first.features)


def test_other_feature_settings_use_another_folder(cfg, monkeypatch):
    first = build_cache(cfg, progress=False, workers=1)
    other = cfg.replace(**{"features.n_mels": 64})
    calls = count_decodes(monkeypatch)
    second = build_cache(other, progress=False, workers=1)
    assert second.path != first.path and len(calls) == 12
    assert second.features.shape == (12, 313, 64)
    assert FeatureCache.open(first.path).features.shape == (12, 313, 128)  # still there


@pytest.mark.parametrize("change", ["add", "remove", "rewrite"])
def test_changed_files_rebuild(cfg, monkeypatch, change):
    first = build_cache(cfg, progress=False, workers=1)
    root = Path(cfg.data.root)
    victim = root / "dev_data" / "fan" / "train" / "section_00_source_train_normal_0001_a_1.wav"
    expected = {"add": 13, "remove": 11, "rewrite": 12}[change]
    if change == "add":
        write_clip(
            root / "dev_data" / "fan" / "train" / "section_00_source_train_normal_0003.wav", 99
        )
    elif change == "remove":
        victim.unlink()
    else:  # same name and size, new content (another seed): must not reuse stale features
        write_clip(victim, 77)
        os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    calls = count_decodes(monkeypatch)
    second = build_cache(cfg, progress=False, workers=1)
    assert second.path == first.path and len(second) == expected and len(calls) == expected
    if change == "rewrite":
        row = second.index.index[second.index["path"] == str(victim)][0]
        fresh = log_mel(asd.method.features.load_audio(victim, cfg.features), SR, cfg.features)
        np.testing.assert_allclose(second.features[row].astype(np.float32), fresh, atol=0.04)


def test_interrupted_build_is_never_used(cfg, monkeypatch):
    real = asd.infra.feature_cache._extract_chunk
    seen = []

    def dying(*args):
        if seen:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second chunk
        seen.append(1)
        return real(*args)

    monkeypatch.setattr(asd.infra.feature_cache, "_extract_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, progress=False, workers=1, chunk_size=4)
    folder = cache_folder(cfg)
    assert not folder.exists() and temporaries(cfg) == []  # the temporary folder is removed
    with pytest.raises(CacheError, match="does not exist"):
        FeatureCache.open(folder)
    monkeypatch.setattr(asd.infra.feature_cache, "_extract_chunk", real)
    cache = build_cache(cfg, progress=False, workers=1)
    assert len(cache) == 12 and cache.settings["complete"] is True


def test_leftovers_of_a_killed_build_are_rebuilt(cfg, monkeypatch):
    complete = build_cache(cfg, progress=False, workers=1)
    folder = complete.path
    # a rebuild killed after it started: the stale cache lost its settings.json first, and the
    # temporary folder it was filling is left
    (folder / "settings.json").unlink()
    left = folder.parent / f".{folder.name}.12345.tmp"
    left.mkdir()
    (left / "features.npy").write_bytes(b"partial")
    with pytest.raises(CacheError, match=f"{folder}.*incomplete"):
        FeatureCache.open(folder)
    calls = count_decodes(monkeypatch)
    again = build_cache(cfg, progress=False, workers=1)
    assert len(calls) == 12 and len(again) == 12
    assert temporaries(cfg) == []
    # a marker that says incomplete, or a truncated features.npy, is refused too
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(json.dumps({**settings, "complete": False}))
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(folder)
    (folder / "settings.json").write_text(json.dumps(settings))
    data = (folder / "features.npy").read_bytes()
    (folder / "features.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="features.npy|cannot read"):
        FeatureCache.open(folder)
    assert len(build_cache(cfg, progress=False, workers=1)) == 12  # and rebuilt


@pytest.mark.slow
def test_killed_build_process_leaves_no_usable_cache(cfg, repo):
    """SIGKILL a real build mid-way (its chunks slowed down), then check and rebuild."""
    script = (
        "import sys, time\n"
        "import asd.infra.feature_cache as c\n"
        "from asd.infra.config import load_config\n"
        "real = c._extract_chunk\n"
        "def slow(*a):\n"
        "    out = real(*a); print('chunk', flush=True); time.sleep(30); return out\n"
        "c._extract_chunk = slow\n"
        f"cfg = load_config({str(repo / 'config.yml')!r}, sys.argv[1:])\n"
        "c.build_cache(cfg, progress=False, workers=1, chunk_size=2)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            f"data.root={cfg.data.root}",
            f"data.cache_dir={cfg.data.cache_dir}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
    )
    try:
        assert proc.stdout.readline().strip() == "chunk"  # one chunk written, more to come
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    folder = cache_folder(cfg)
    assert temporaries(cfg) == [f".{folder.name}.{proc.pid}.tmp"]  # half-built, never used
    with pytest.raises(CacheError, match="does not exist"):
        FeatureCache.open(folder)
    cache = build_cache(cfg, progress=False, workers=1)
    assert len(cache) == 12 and temporaries(cfg) == []


def test_bad_clip_fails_the_build_naming_it(cfg):
    bad = (
        Path(cfg.data.root)
        / "dev_data"
        / "valve"
        / "train"
        / "section_00_source_train_normal_0002_a_2.wav"
    )
    bad.write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioError, match=str(bad)):
        build_cache(cfg, progress=False, workers=2, chunk_size=2)
    assert not cache_folder(cfg).exists() and temporaries(cfg) == []


def test_concurrent_builders_build_once(cfg, monkeypatch):
    calls = count_decodes(monkeypatch)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(build_cache(cfg, progress=False, workers=1)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(calls) == 12  # the second waited, then reused
    np.testing.assert_array_equal(results[0].features, results[1].features)


def test_converted_clips_are_summarised_in_one_warning(cfg):
    root = Path(cfg.data.root)
    write_clip(
        root / "dev_data" / "fan" / "train" / "section_00_source_train_normal_0007.wav",
        5,
        seconds=12.0,
    )
    with pytest.warns(
        asd.method.features.AudioWarning,
        match=r"1 clip\(s\) were converted.*normal_0007"
        r"\.wav: 12\.000 s gives 376 frames",
    ):
        cache = build_cache(cfg, progress=False, workers=1)
    assert cache.settings["converted_clips"] == 1


def test_open_errors_name_the_folder(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        FeatureCache.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match=f"{tmp_path / 'empty'}.*incomplete"):
        FeatureCache.open(tmp_path / "empty")


def test_a_bad_root_is_a_clear_error(cfg, tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        build_cache(cfg, root=tmp_path / "nowhere", progress=False)


def test_synthetic_data_set_in_the_challenge_layout(tiny_cfg):
    cache = build_cache(tiny_cfg, progress=False)
    index = index_dataset(tiny_cfg.data.root)
    pd.testing.assert_frame_equal(cache.index, index, check_dtype=False)
    assert cache.features.shape == (len(index), 313, 128)
    # the builder hands back the table it wrote; index.csv reads back as exactly that table
    reread = FeatureCache.open(cache.path)
    pd.testing.assert_frame_equal(reread.index, cache.index)
    unlabelled = reread.index[reread.index["dataset"] == "eval_data"]
    unlabelled = unlabelled[unlabelled["split"] == "test"]
    assert len(unlabelled) > 0 and unlabelled["label"].isna().all()  # None survives the CSV
    assert np.isfinite(cache.features[:]).all() and np.all(cache.std > 0.1)
    i = len(index) // 2
    feats = log_mel(
        asd.method.features.load_audio(index["path"][i], tiny_cfg.features), SR, tiny_cfg.features
    )
    np.testing.assert_allclose(cache.features[i].astype(np.float32), feats, atol=0.04)


def test_real_recordings_cache(real_audio, repo, tmp_path):
    """2023 layout (machine/train, machine/test), attributes in names, 12 s clips cropped."""
    cfg = load_config(
        repo / "config.yml", [f"data.root={real_audio}", f"data.cache_dir={tmp_path / 'cache'}"]
    )
    with pytest.warns(
        asd.method.features.AudioWarning, match=r"8 clip\(s\) were converted.*cropped"
    ):
        cache = build_cache(cfg, progress=False)
    assert cache.features.shape == (28, 313, 128)
    assert cache.settings["converted_clips"] == 8  # the ToyCar and ToyTrain clips are 12 s
    assert np.isfinite(cache.features[:]).all()
    assert set(cache.index["machine"]) >= {"ToyCar", "bearing", "valve"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_fails_the_build_and_keeps_nothing(cfg, monkeypatch, workers):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)  # index.csv, after the features
    with pytest.raises(CacheError, match="build failed.*No space left"):
        build_cache(cfg, progress=False, workers=workers, chunk_size=2)
    assert not cache_folder(cfg).exists() and temporaries(cfg) == []
    monkeypatch.undo()
    assert len(build_cache(cfg, progress=False, workers=workers)) == 12
