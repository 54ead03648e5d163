"""The on-disk log-mel cache: contents, reuse, rebuilds, interrupted builds, statistics."""

from __future__ import annotations

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
import torch

import asd.cache
import asd.features
from asd.cache import CacheError, FeatureCache, build_cache, cache_folder
from asd.config import load_config
from asd.data import index_dataset
from asd.features import AudioError, log_mel

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
        names += ["train/section_00_target_train_normal_0000_a_9.wav",
                  "source_test/section_00_source_test_normal_0000.wav",
                  "target_test/section_00_target_test_anomaly_0000.wav"]
        for name in names:
            write_clip(base / name, seed)
            seed += 1
    return root


@pytest.fixture
def cfg(repo, tmp_path):
    root = make_root(tmp_path / "data")
    return load_config(repo / "config.yml", [f"data.root={root}",
                                             f"data.cache_dir={tmp_path / 'cache'}"])


def count_decodes(monkeypatch) -> list:
    calls = []
    real = asd.features.read_audio_into

    def counting(path, fc, out):
        calls.append(path)
        return real(path, fc, out)

    monkeypatch.setattr(asd.features, "read_audio_into", counting)
    return calls


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
        feats = log_mel(asd.features.load_audio(path, cfg.features), SR, cfg.features)
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
        ".lock", "features.npy", "index.csv", "settings.json", "stats.npz"]


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
_REAL_EXTRACT_CHUNK = asd.cache._extract_chunk


def _dies_in_a_worker(*args):  # module level: the process pool pickles it by name
    if os.getpid() != _PARENT:  # in a forked worker: gone, as if killed for memory
        os._exit(9)
    return _REAL_EXTRACT_CHUNK(*args)


def test_a_dying_worker_process_fails_the_build_and_keeps_nothing(cfg, monkeypatch):
    real = asd.cache._extract_chunk
    monkeypatch.setattr(asd.cache, "_extract_chunk", _dies_in_a_worker)
    with pytest.raises(CacheError, match="worker process died.*nothing of this build is kept"):
        build_cache(cfg, progress=False, workers=2, chunk_size=2)
    folder = cache_folder(cfg)
    assert not (folder / "settings.json").exists() and not list(folder.glob(".features.*"))
    monkeypatch.setattr(asd.cache, "_extract_chunk", real)
    assert len(build_cache(cfg, progress=False, workers=2)) == 12


def test_chunk_statistics_are_exact_for_any_mix_of_training_rows():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy((rng.normal(-40, 15, (5, 313, 8)) + 30 * rng.random(8))
                             .astype(np.float32))
    train = np.array([True, False, True, True, False])
    x = feats.numpy()[train].reshape(-1, 8).astype(np.float64)
    count, mean, m2 = asd.cache._chunk_stats(feats.clone(), train)
    assert count == len(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m2, np.square(x - x.mean(axis=0)).sum(axis=0), rtol=1e-5)
    every = feats.numpy().reshape(-1, 8).astype(np.float64)  # all rows: no copy, in place
    count, mean, m2 = asd.cache._chunk_stats(feats.clone(), np.ones(5, bool))
    assert count == len(every)
    np.testing.assert_allclose(m2, np.square(every - every.mean(axis=0)).sum(axis=0), rtol=1e-5)
    assert asd.cache._chunk_stats(feats, np.zeros(5, bool))[0] == 0


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
        write_clip(root / "dev_data" / "fan" / "train" / "section_00_source_train_normal_0003.wav",
                   99)
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
        fresh = log_mel(asd.features.load_audio(victim, cfg.features), SR, cfg.features)
        np.testing.assert_allclose(second.features[row].astype(np.float32), fresh, atol=0.04)


def test_interrupted_build_is_never_used(cfg, monkeypatch):
    real = asd.cache._extract_chunk
    seen = []

    def dying(*args):
        if seen:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second chunk
        seen.append(1)
        return real(*args)

    monkeypatch.setattr(asd.cache, "_extract_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, progress=False, workers=1, chunk_size=4)
    folder = cache_folder(cfg)
    assert not (folder / "settings.json").exists() and not (folder / "features.npy").exists()
    assert not list(folder.glob(".features.*"))  # the temporary array is removed
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(folder)
    monkeypatch.setattr(asd.cache, "_extract_chunk", real)
    cache = build_cache(cfg, progress=False, workers=1)
    assert len(cache) == 12 and cache.settings["complete"] is True


def test_leftovers_of_a_killed_build_are_rebuilt(cfg, monkeypatch):
    complete = build_cache(cfg, progress=False, workers=1)
    folder = complete.path
    # a build killed after it started: the marker was removed first, a temp array is left, and
    # the temporary of the index it was writing
    (folder / "settings.json").unlink()
    (folder / ".features.12345.npy").write_bytes(b"partial")
    (folder / ".index.csv.abc123.tmp").write_text("path,fi")
    with pytest.raises(CacheError, match=f"{folder}.*incomplete"):
        FeatureCache.open(folder)
    calls = count_decodes(monkeypatch)
    again = build_cache(cfg, progress=False, workers=1)
    assert len(calls) == 12 and len(again) == 12
    assert not (folder / ".features.12345.npy").exists()
    assert not (folder / ".index.csv.abc123.tmp").exists()
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
        "import asd.cache as c\n"
        "from asd.config import load_config\n"
        "real = c._extract_chunk\n"
        "def slow(*a):\n"
        "    out = real(*a); print('chunk', flush=True); time.sleep(30); return out\n"
        "c._extract_chunk = slow\n"
        f"cfg = load_config({str(repo / 'config.yml')!r}, sys.argv[1:])\n"
        "c.build_cache(cfg, progress=False, workers=1, chunk_size=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, f"data.root={cfg.data.root}",
                             f"data.cache_dir={cfg.data.cache_dir}"],
                            stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        assert proc.stdout.readline().strip() == "chunk"  # one chunk written, more to come
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    folder = cache_folder(cfg)
    assert list(folder.glob(".features.*.npy"))  # the half-written array, under its temp name
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(folder)
    cache = build_cache(cfg, progress=False, workers=1)
    assert len(cache) == 12 and not list(folder.glob(".features.*.npy"))


def test_bad_clip_fails_the_build_naming_it(cfg):
    bad = Path(cfg.data.root) / "dev_data" / "valve" / "train" / \
        "section_00_source_train_normal_0002_a_2.wav"
    bad.write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioError, match=str(bad)):
        build_cache(cfg, progress=False, workers=2, chunk_size=2)
    folder = cache_folder(cfg)
    assert not (folder / "settings.json").exists() and not list(folder.glob(".features.*"))


def test_concurrent_builders_build_once(cfg, monkeypatch):
    calls = count_decodes(monkeypatch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        build_cache(cfg, progress=False, workers=1))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(calls) == 12  # the second waited, then reused
    np.testing.assert_array_equal(results[0].features, results[1].features)


def test_converted_clips_are_summarised_in_one_warning(cfg):
    root = Path(cfg.data.root)
    write_clip(root / "dev_data" / "fan" / "train" / "section_00_source_train_normal_0007.wav",
               5, seconds=12.0)
    with pytest.warns(asd.features.AudioWarning, match=r"1 clip\(s\) were converted.*normal_0007"
                                                       r"\.wav: 12\.000 s gives 376 frames"):
        cache = build_cache(cfg, progress=False, workers=1)
    assert cache.settings["converted_clips"] == 1


def test_normalise_numpy_and_torch(cfg):
    cache = build_cache(cfg, progress=False, workers=1)
    x = cache.features[:3]  # (3, 313, 128) float16
    z = cache.normalise(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z, (x.astype(np.float32) - cache.mean) / cache.std, rtol=1e-6)
    zt = cache.normalise(torch.from_numpy(np.array(x)))
    assert zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-5, atol=1e-6)
    train = cache.normalise(cache.features[np.flatnonzero(cache.index["split"] == "train")])
    flat = train.reshape(-1, 128)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=2e-3)
    np.testing.assert_allclose(flat.std(axis=0), 1, atol=2e-3)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        cache.normalise([1.0, 2.0])


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
    feats = log_mel(asd.features.load_audio(index["path"][i], tiny_cfg.features), SR,
                    tiny_cfg.features)
    np.testing.assert_allclose(cache.features[i].astype(np.float32), feats, atol=0.04)


def test_real_recordings_cache(real_audio, repo, tmp_path):
    """2023 layout (machine/train, machine/test), attributes in names, 12 s clips cropped."""
    cfg = load_config(repo / "config.yml", [f"data.root={real_audio}",
                                            f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.warns(asd.features.AudioWarning, match=r"8 clip\(s\) were converted.*cropped"):
        cache = build_cache(cfg, progress=False)
    assert cache.features.shape == (28, 313, 128)
    assert cache.settings["converted_clips"] == 8  # the ToyCar and ToyTrain clips are 12 s
    assert np.isfinite(cache.features[:]).all()
    assert set(cache.index["machine"]) >= {"ToyCar", "bearing", "valve"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_rows_start_their_way_to_disk_as_they_are_written(tmp_path):
    # the closing fsync then has little left; found through ctypes, so check it is found and
    # that the kernel accepts the call as the builder makes it (it ignores the result)
    sync_file_range = asd.cache._sync_file_range()
    assert sync_file_range is not None
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\0" * 8192)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\1" * 4096, 4096)
        assert sync_file_range(fd, 4096, 4096, 2) == 0  # SYNC_FILE_RANGE_WRITE
        asd.cache._start_writeback(fd, 4096, 4096)
    finally:
        os.close(fd)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_while_the_index_is_written_fails_the_build(cfg, monkeypatch, workers):
    # index.csv is written while the workers extract: its failure must end the build like
    # theirs, with nothing kept that looks complete
    import errno

    real = asd.cache.write_index

    def full(index, path):
        with asd.cache.atomic_path(path) as tmp:
            tmp.write_text("path,fi")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asd.cache, "write_index", full)
    with pytest.raises(CacheError, match="build failed.*No space left"):
        build_cache(cfg, progress=False, workers=workers, chunk_size=2)
    folder = cache_folder(cfg)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    monkeypatch.setattr(asd.cache, "write_index", real)
    assert len(build_cache(cfg, progress=False, workers=workers)) == 12
