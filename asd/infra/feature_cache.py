"""The log-mel feature cache of a data root, built once and memory-mapped by every step.

``<cache_dir>/<root name>-<hash of settings, root>/``: ``features.npy`` ((N, frames, mels),
memory-mapped, row i = clip i), ``index.csv``, ``stats.npz`` (per-band ``mean``, ``std`` over
training frames), ``settings.json`` (with a fingerprint of the files' names, sizes, times).
Forked workers fill a temporary folder that is renamed into place once complete; a stale cache
loses its settings.json first. A lock serialises builders of one folder (e.g. DDP ranks).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import warnings
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from asd import AsdError
from asd.infra.config import Config, FeatureConfig
from asd.infra.data import detect_layout, index_dataset
from asd.method.features import AudioWarning, log_mel_batch, mel_filterbank, read_audio

log = logging.getLogger(__name__)

FORMAT = "asd-feature-cache-v1"
EXTRACTOR = 3  # bump when asd.method.features changes the numbers it computes: old caches rebuild
STD_FLOOR = 1e-3  # dB; a band constant over all training frames must not divide by zero
CHUNK = 16  # clips per worker task


class CacheError(AsdError):
    """A cache folder that cannot be used (incomplete, inconsistent); the message names it."""


def cache_folder(cfg: Config, root: str | Path | None = None) -> Path:
    """``<cfg.data.cache_dir>/<root name>-<hash of the feature settings and the root>``."""
    root = Path(root or cfg.data.root).resolve()
    key = {"features": _feature_settings(cfg), "root": str(root)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.data.cache_dir) / f"{root.name}-{digest}"


def _feature_settings(cfg: Config) -> dict:
    """What the numbers of a cache depend on: the feature settings and the channel read."""
    return {
        "format": FORMAT,
        "extractor": EXTRACTOR,
        **dataclasses.asdict(cfg.features),
        "channel": cfg.data.channel,
    }


@dataclasses.dataclass
class FeatureCache:
    """A complete cache folder: memory-mapped features, their index and per-band statistics."""

    path: Path
    features: np.ndarray  # (N, frames, mels) memory-mapped, read-only
    index: pd.DataFrame  # row i <-> features[i]
    mean: np.ndarray  # (mels,) float32
    std: np.ndarray  # (mels,) float32, >= STD_FLOOR
    settings: dict

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def open(cls, path: str | Path) -> FeatureCache:
        """Open a complete cache folder; CacheError naming the folder when it is not one."""
        path = Path(path)
        if not (path / "settings.json").is_file():  # none, stale, or a build was interrupted
            state = "is incomplete" if path.is_dir() else "does not exist"
            raise CacheError(f"feature cache {path} {state}; run `make cache` to build it")
        try:
            settings = json.loads((path / "settings.json").read_text())
            if settings["format"] != FORMAT or settings["complete"] is not True:
                raise ValueError(f"settings.json: incomplete or not {FORMAT}")
            features = np.load(path / "features.npy", mmap_mode="r")
            with np.load(path / "stats.npz") as stats:
                mean, std = stats["mean"].astype(np.float32), stats["std"].astype(np.float32)
            index = pd.read_csv(path / "index.csv", dtype=str, keep_default_na=False)
            index = index.astype({"index": int, "class": int})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheError(f"feature cache {path}: cannot read its files ({err})") from None
        for column in ("label", "domain"):  # "" in the CSV: unknown (2022+ evaluation test)
            index[column] = pd.Series([v or None for v in index[column]], dtype=object)
        return cls(path, features, index, mean, std, settings)


def build_cache(
    cfg: Config,
    root: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    chunk_size: int = CHUNK,
) -> FeatureCache:
    """Build, or reuse when complete and up to date, the log-mel cache of ``root or cfg.data.root``
    with ``workers`` processes (default: one per usable core; 1: in this process). Nothing of a
    failed build (AudioError, a full disk, a worker's death) is kept."""
    root = Path(root or cfg.data.root)
    layout = detect_layout(root, cfg.data.layout)
    index = index_dataset(root, layout)
    folder = cache_folder(cfg, root)
    files = hashlib.sha256()  # changes when a clip is added, removed or rewritten
    for p in index["path"]:
        st = os.stat(p)
        files.update(f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    settings = {
        "format": FORMAT,
        "features": _feature_settings(cfg),
        "layout": layout.name,
        "root": str(root.resolve()),
        "clips": len(index),
        "files": files.hexdigest(),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            cache = FeatureCache.open(folder)
            if all(
                cache.settings.get(k) == settings[k]
                for k in ("features", "layout", "clips", "files")
            ):
                log.info("reusing feature cache %s (%d clips)", folder, len(cache))
                return cache
        except CacheError as err:
            if folder.is_dir():
                log.warning("%s; rebuilding", err)
        (folder / "settings.json").unlink(missing_ok=True)  # stale: never to be used again
        for old in folder.parent.glob(f".{folder.name}.*.tmp"):
            shutil.rmtree(old)  # left by a killed build
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        try:
            tmp.mkdir()
            notes = _build(
                tmp,
                index,
                cfg.features,
                cfg.data.channel,
                workers or len(os.sched_getaffinity(0)),
                chunk_size,
                progress,
            )
            clips = len({p for p, _ in notes})
            (tmp / "settings.json").write_text(
                json.dumps({**settings, "converted_clips": clips, "complete": True}, indent=2)
                + "\n"
            )
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        except OSError as err:  # a full disk
            raise CacheError(f"feature cache {folder}: the build failed ({err})") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if notes:
        examples = "; ".join(f"{p}: {n}" for p, n in notes[:3])
        warnings.warn(
            f"{clips} clip(s) were converted to fit the features (or are silent), e.g. {examples}",
            AudioWarning,
            stacklevel=2,
        )
    return FeatureCache.open(folder)


def _build(
    tmp: Path,
    index: pd.DataFrame,
    fcfg: FeatureConfig,
    channel: int | str,
    workers: int,
    chunk_size: int,
    progress: bool,
) -> list[tuple[str, str]]:
    """Write features.npy, index.csv and stats.npz into ``tmp``; return the conversion notes."""
    n, row_bytes = len(index), fcfg.frames * fcfg.n_mels * np.dtype(fcfg.dtype).itemsize
    offset = np.lib.format.open_memmap(
        tmp / "features.npy", mode="w+", dtype=fcfg.dtype, shape=(n, fcfg.frames, fcfg.n_mels)
    ).offset  # header
    paths, train = list(index["path"]), list(index["split"] == "train")
    mel_filterbank(fcfg)  # computed once here: forked workers inherit it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a clip's STFT is too small to share between threads
    pool = (
        ThreadPoolExecutor(1)
        if workers == 1
        else ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=signal.signal,
            initargs=(signal.SIGINT, signal.SIG_IGN),
        )
    )  # Ctrl-C is the parent's to handle
    try:
        futures = [
            pool.submit(
                _extract_chunk,
                paths[i : i + chunk_size],
                train[i : i + chunk_size],
                fcfg,
                str(tmp / "features.npy"),
                offset + i * row_bytes,
                channel,
            )
            for i in range(0, n, chunk_size)
        ]  # results in order: the same bits always
        results = [
            f.result()
            for f in tqdm(
                futures,
                desc=f"log-mel cache, {chunk_size} clips a chunk",
                unit="chunk",
                disable=not progress,
            )
        ]
    except BrokenExecutor as err:  # a worker was killed (out of memory, ...)
        raise CacheError(f"a feature worker process died ({err}); nothing is kept") from err
    finally:
        torch.set_num_threads(threads)
        pool.shutdown(cancel_futures=True)
    index.to_csv(tmp / "index.csv", index=False)
    count, sums, squares = (sum(r[k] for r in results) for k in range(3))
    mean = sums / count  # count > 0: index_dataset insists on training clips
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0.0)), STD_FLOOR)
    np.savez(tmp / "stats.npz", mean=np.float32(mean), std=np.float32(std), frames=np.int64(count))
    return [note for r in results for note in r[3]]


def _extract_chunk(
    paths: list[str],
    train: list[bool],
    fcfg: FeatureConfig,
    target: str,
    offset: int,
    channel: int | str = 0,
) -> tuple[int, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Rows of ``paths`` into ``target`` at ``offset``: (training frames, sums, squares, notes)."""
    rows = torch.empty(len(paths), fcfg.frames, fcfg.n_mels, dtype=getattr(torch, fcfg.dtype))
    sums, squares = torch.zeros(2, fcfg.n_mels, dtype=torch.float64)
    notes = []
    with torch.no_grad():
        for i, p in enumerate(paths):
            wave, clip_notes = read_audio(p, fcfg, channel)
            notes += [(p, note) for note in clip_notes]
            db = log_mel_batch(torch.from_numpy(wave)[None], fcfg)[0]  # (T, M)
            rows[i] = db
            if train[i]:  # from the float32 numbers, not the stored ones
                sums += db.sum(0, dtype=torch.float64)
                squares += db.square().sum(0, dtype=torch.float64)
    with open(target, "r+b") as f:
        f.seek(offset)
        f.write(rows.numpy().data)
    return sum(train) * fcfg.frames, sums.numpy(), squares.numpy(), notes
