"""The on-disk log-mel cache: computed once per data root and feature settings, memory-mapped.

``<cache_dir>/<root name>-<hash>/`` (the hash covers the feature settings and the root's
absolute path) holds:

- ``features.npy``: (N, frames, mels) in ``cfg.features.dtype``, row i = clip i of the index;
  written in batches into a file created by ``np.lib.format.open_memmap`` under a temporary
  name and renamed when complete;
- ``index.csv``: the clip index (``asd.data.index_dataset``), row order = array order;
- ``stats.npz``: ``mean``, ``std`` (mels,) float32 over all frames of the training clips,
  accumulated chunk by chunk (Chan's parallel variance), std floored at ``STD_FLOOR``;
- ``settings.json``: feature settings, hash, clip count, a fingerprint of the files (relative
  path, size, modification time) and ``"complete": true``. It is written last, so a folder
  without it (an interrupted build) is never used; ``FeatureCache.open`` refuses it.

A build decodes and extracts on ``workers`` forked processes (default: the usable cores), each
taking a chunk of files and writing its rows straight into the array file, so memory stays
bounded by the chunk size whatever the size of the data set. A lock file serialises builders of
one folder (e.g. the ranks of a DDP run): the second one finds the cache complete and reuses it.
"""

from __future__ import annotations

from asd import AsdError

import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import warnings
from concurrent.futures import (FIRST_COMPLETED, BrokenExecutor, Executor, ProcessPoolExecutor,
                                ThreadPoolExecutor, wait)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from asd.config import Config, FeatureConfig
from asd.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "asd-feature-cache-v1"
EXTRACTOR = 2  # bump when asd.features changes the numbers it computes: old caches rebuild
# 2: on CPU the dB conversion is NumPy's (last-bit differences from 1)
STD_FLOOR = 1e-3  # dB; a band constant over all training frames must not divide by zero
CHUNK = 16  # clips per task: its rows (float32 + stored dtype, ~4 MB) are all a worker holds
_STRING_COLUMNS = ["path", "file", "dataset", "machine", "section", "domain", "split", "label",
                   "attributes"]


class CacheError(AsdError):
    """A cache folder that cannot be used (incomplete, inconsistent); the message names it."""


# ----------------------------------------------------------------------------------------------
# Keys


def feature_settings(fcfg: FeatureConfig) -> dict:
    """What the cached numbers depend on (besides the audio): settings + format versions."""
    return {"format": FORMAT, "extractor": EXTRACTOR, **dataclasses.asdict(fcfg)}


def cache_hash(fcfg: FeatureConfig, root: str | Path) -> str:
    """12 hex digits over the feature settings and the root's absolute path."""
    key = {"features": feature_settings(fcfg), "root": str(Path(root).resolve())}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cache_folder(cfg: Config, root: str | Path | None = None) -> Path:
    """``<cfg.data.cache_dir>/<root name>-<hash>``."""
    root = Path(root or cfg.data.root)
    return Path(cfg.data.cache_dir) / f"{root.resolve().name}-{cache_hash(cfg.features, root)}"


def files_fingerprint(paths: list[str], root: str | Path) -> str:
    """Hash of (path relative to root, size, mtime) of every clip: changes when files do."""
    root = os.path.abspath(root)  # index paths are absolute() paths under it; no resolve()
    prefix = os.path.join(root, "")
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        # the prefix cut is relpath's answer for paths under root, at a tenth of its cost
        rel = p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root)
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass
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
    def open(cls, path: str | Path, index: Optional[pd.DataFrame] = None) -> "FeatureCache":
        """Open a complete cache folder; CacheError naming the folder when it is not one.

        ``index``: the table index.csv holds, when the caller has it (the builder that just
        wrote it), instead of reading it back.
        """
        path = Path(path)
        settings_file = path / "settings.json"
        if not path.is_dir():
            raise CacheError(f"feature cache {path} does not exist")
        if not settings_file.is_file():
            raise CacheError(f"feature cache {path} is incomplete (no settings.json: the build "
                             f"was interrupted or is running); run `make cache` to rebuild it")
        try:
            settings = json.loads(settings_file.read_text())
        except (OSError, ValueError) as err:
            raise CacheError(f"feature cache {path}: unreadable settings.json ({err})") from None
        if not isinstance(settings, dict) or settings.get("complete") is not True:
            raise CacheError(f"feature cache {path} is incomplete (settings.json is not marked "
                             f"complete); run `make cache` to rebuild it")
        if settings.get("format") != FORMAT:
            raise CacheError(f"feature cache {path}: format {settings.get('format')!r}, "
                             f"expected {FORMAT!r}; rebuild it")
        try:
            features = np.load(path / "features.npy", mmap_mode="r")
            with np.load(path / "stats.npz") as stats:
                mean = stats["mean"].astype(np.float32)
                std = stats["std"].astype(np.float32)
            index = read_index(path / "index.csv") if index is None else index
        except (OSError, ValueError, KeyError) as err:
            raise CacheError(f"feature cache {path}: cannot read its files ({err}); "
                             f"rebuild it") from None
        f = settings["features"]
        expected = (settings["clips"], f["frames"], f["n_mels"])
        if features.shape != expected or str(features.dtype) != f["dtype"]:
            raise CacheError(f"feature cache {path}: features.npy is {features.shape} "
                             f"{features.dtype}, settings.json says {expected} {f['dtype']}")
        bands = (f["n_mels"],)
        if len(index) != settings["clips"] or mean.shape != bands or std.shape != bands:
            raise CacheError(f"feature cache {path}: index.csv has {len(index)} rows / stats "
                             f"{mean.shape}, expected {settings['clips']} rows / ({f['n_mels']},)")
        return cls(path=path, features=features, index=index, mean=mean, std=std,
                   settings=settings)

    def normalise(self, x: Any) -> Any:
        """(x - mean) / std per mel band (last axis), as float32; numpy arrays or torch tensors."""
        if isinstance(x, np.ndarray) or np.isscalar(x):
            return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)
        import torch

        if isinstance(x, torch.Tensor):
            mean = torch.as_tensor(self.mean, device=x.device)
            std = torch.as_tensor(self.std, device=x.device)
            return (x.to(torch.float32) - mean) / std
        raise TypeError(f"normalise: expected a numpy array or torch tensor, "
                        f"got {type(x).__name__}")


def write_index(index: pd.DataFrame, path: Path) -> None:
    """index.csv, atomically; ``read_index`` gives the same table back."""
    with atomic_path(path) as tmp:
        index.to_csv(tmp, index=False)


def read_index(path: Path) -> pd.DataFrame:
    """Read index.csv: strings stay strings ("00"), a missing label is None."""
    df = pd.read_csv(path, dtype={c: str for c in _STRING_COLUMNS}, keep_default_na=False)
    df["label"] = pd.Series([v if v != "" else None for v in df["label"]], dtype=object)
    return df.astype({"index": int, "class": int})


def _reusable(folder: Path, settings: dict) -> Optional[FeatureCache]:
    """The cache in ``folder`` when it is complete and matches ``settings``, else None."""
    try:
        cache = FeatureCache.open(folder)
    except CacheError as err:
        if (folder / "settings.json").exists():
            log.warning("%s; rebuilding", err)
        return None
    old = cache.settings
    for key in ("features", "hash", "clips", "files"):
        if old.get(key) != settings[key]:
            what = "the files under the data root changed" if key in ("clips", "files") else \
                f"its {key} differ"
            log.info("feature cache %s: %s; rebuilding", folder, what)
            return None
    return cache


# ----------------------------------------------------------------------------------------------
# Building


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s combination of (count, mean, M2) per band."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + delta ** 2 * (na * nb / n)


_LOCAL = threading.local()


def _extract_chunk(paths: list[str], start: int, target: str, offset: int, fcfg: FeatureConfig,
                   train: list[bool]) -> tuple[int, tuple, list[tuple[str, str]]]:
    """Decode + extract ``paths``, write rows start.. into ``target``; return stats and notes.

    Rows go in with ``os.pwrite`` at their byte offset: nothing but this chunk is in memory.
    Every buffer is this worker's from its previous chunk: a fresh one costs a page fault per
    4 KiB, which showed as a third of the time per clip.
    """
    import torch

    from asd.features import _extractor, read_audio_into

    extractor = _extractor(fcfg)
    n_clips = len(paths)
    if getattr(_LOCAL, "cfg", None) != fcfg or _LOCAL.feats.shape[0] < n_clips:
        shape = (n_clips, fcfg.frames, fcfg.n_mels)
        _LOCAL.cfg = fcfg
        _LOCAL.feats = torch.empty(shape)  # (n, T, M) dB
        _LOCAL.stored = torch.empty(shape, dtype=getattr(torch, fcfg.dtype))
    feats, stored = _LOCAL.feats[:n_clips], _LOCAL.stored[:n_clips]
    buffer = extractor.cpu_buffer()
    notes = []
    # each clip is decoded straight into the STFT's input and extracted while it is in the cache
    for i, p in enumerate(paths):
        notes += [(p, note) for note in read_audio_into(p, fcfg, buffer)]
        extractor.from_buffer(feats[i])
    stored.copy_(feats)  # torch converts to float16 ~7x faster than numpy
    stats = _chunk_stats(feats, np.asarray(train, dtype=bool))  # overwrites feats
    data = stored.numpy()
    fd = os.open(target, os.O_WRONLY)
    try:
        view = memoryview(data).cast("B")
        pos, done = offset + start * data[0].nbytes, 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], pos + done)
        _start_writeback(fd, pos, len(view))
    finally:
        os.close(fd)
    return n_clips, stats, notes


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing these bytes to disk now, without waiting (Linux ``sync_file_range``), so
    that the build's closing fsync finds little left to do; nothing where it is missing."""
    func = _sync_file_range()
    if func is not None:
        func(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure only leaves it to fsync


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError, TypeError):  # not Linux: no such call, or no libc handle
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _chunk_stats(feats: Any, train: np.ndarray) -> tuple:
    """(count, mean, M2) per band, float64, over all frames of the clips where ``train``.

    Per clip first (its mean, and its squared deviations from it, summed in float32: no
    cancellation), then combined over the clips in float64 (Chan et al.), exact to rounding.
    The deviations are computed in place: ``feats`` (float32 torch) is overwritten, so no
    second chunk-sized buffer is needed (each fresh worker pays a page fault per 4 KiB of one).
    """
    import torch

    n_mels = feats.shape[-1]
    if not train.any():
        return 0, np.zeros(n_mels), np.zeros(n_mels)
    if not train.all():
        feats = feats[torch.from_numpy(np.flatnonzero(train))]
    n, frames = feats.shape[:2]
    means = feats.mean(dim=1, keepdim=True)  # (n, 1, M)
    m2_clips = feats.sub_(means).square_().sum(dim=1).numpy().astype(np.float64)  # (n, M)
    means = means[:, 0].numpy().astype(np.float64)
    mean = means.mean(axis=0)
    m2 = m2_clips.sum(axis=0) + frames * np.square(means - mean).sum(axis=0)
    return n * frames, mean, m2


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def build_cache(cfg: Config, root: str | Path | None = None, progress: bool = True,
                workers: Optional[int] = None, chunk_size: int = CHUNK) -> FeatureCache:
    """Build, or reuse when complete and up to date, the log-mel cache of ``root or cfg.data.root``.

    Rebuilds when the feature settings, the root or the set of files (names, sizes, times)
    changed, and when a previous build did not complete. ``workers``: worker processes
    (default: the usable cores; 1 = in this process). Raises asd.data.DataError for a bad data
    root and asd.features.AudioError naming the file for an unusable clip (nothing is kept);
    CacheError naming the folder when writing fails (a full disk).
    """
    from asd.data import index_dataset

    root = Path(root or cfg.data.root)
    index = index_dataset(root)
    folder = cache_folder(cfg, root)
    settings = {"format": FORMAT, "features": feature_settings(cfg.features),
                "hash": cache_hash(cfg.features, root), "root": str(root.resolve()),
                "clips": len(index), "files": files_fingerprint(list(index["path"]), root)}
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        cache = _reusable(folder, settings)
        if cache is not None:
            log.info("reusing feature cache %s (%d clips)", folder, len(cache))
            return cache
        try:
            _build(folder, index, cfg.features, settings, progress,
                   workers or _default_workers(), chunk_size)
        except OSError as err:  # a full disk: the folder stays incomplete, so it is never used
            raise CacheError(f"feature cache {folder}: the build failed ({err}); nothing of it "
                             f"is kept or used") from err
    return FeatureCache.open(folder, index=index)  # index.csv holds just this table


def _build(folder: Path, index: pd.DataFrame, fcfg: FeatureConfig, settings: dict,
           progress: bool, workers: int, chunk_size: int) -> None:
    (folder / "settings.json").unlink(missing_ok=True)  # from here on the folder is incomplete
    for stale in [*folder.glob(".features.*.npy"), *folder.glob(".*.tmp")]:
        stale.unlink()  # left by an interrupted build (its array, atomic_path's temporaries)
    n = len(index)
    log.info("building feature cache %s: %d clips, %d worker(s)", folder, n, workers)
    tmp = folder / f".features.{os.getpid()}.npy"
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=fcfg.dtype,
                                        shape=(n, fcfg.frames, fcfg.n_mels))
        offset = arr.offset
        del arr  # rows are written with pwrite; the mapping would only add to RSS
        paths = list(index["path"])
        train = list(index["split"] == "train")
        chunks = [(paths[i:i + chunk_size], i, str(tmp), offset, fcfg, train[i:i + chunk_size])
                  for i in range(0, n, chunk_size)]
        # the index is written while the workers extract: this process would only wait
        stats, notes = _run_chunks(chunks, n, workers, progress,
                                   meanwhile=lambda: write_index(index, folder / "index.csv"))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / "features.npy")
    finally:
        tmp.unlink(missing_ok=True)
    count, mean, m2 = stats
    if count == 0:
        raise CacheError(f"feature cache {folder}: the data root has no training clips, so there "
                         f"are no normalisation statistics")
    std = np.maximum(np.sqrt(m2 / count), STD_FLOOR)
    with atomic_path(folder / "stats.npz") as p:
        with open(p, "wb") as f:
            np.savez(f, mean=mean.astype(np.float32), std=std.astype(np.float32),
                     frames=np.int64(count))
    _report_notes(notes)
    done = {**settings, "converted_clips": len({p for p, _ in notes}), "complete": True}
    atomic_write_text(folder / "settings.json", json.dumps(done, indent=2) + "\n")
    log.info("feature cache %s complete", folder)


def _run_chunks(chunks: list[tuple], n: int, workers: int, progress: bool,
                meanwhile: Optional[Callable[[], None]] = None) -> tuple[tuple, list]:
    """Run the chunk tasks on ``workers`` worker processes (one thread when ``workers`` is 1),
    at most two per worker in flight; ``meanwhile`` runs here once the first ones are out.

    Processes, not threads: a clip's log-mel is a dozen small torch calls whose Python
    dispatch holds the GIL, so threads stop scaling early; processes scale as far as the cores
    let them (``python -m bench.features`` prints N workers against 1). They are forked (as
    PyTorch's DataLoader workers are), so they start in milliseconds with everything imported
    and the mel matrix built; a spawn or forkserver pool costs seconds and re-imports the
    caller's main module. A fresh worker's first chunk is still slower than the rest (most
    likely page faults on the library code and data it shares with the parent). Each runs one
    torch thread and ignores Ctrl-C, which the parent handles by cancelling the rest and
    discarding the build.
    Where fork does not exist, threads do the work.
    """
    import torch
    from tqdm import tqdm

    from asd.features import _extractor

    fcfg = chunks[0][4]
    _extractor(fcfg)  # build the mel matrix once: the workers inherit it
    parts: dict[int, tuple] = {}  # chunk start -> (stats, notes), merged in chunk order below
    threads = torch.get_num_threads()
    # One intra-op thread: a clip's STFT is too small to split, and OpenMP's waiting threads
    # made a 1-worker build 5x slower on a busy machine.
    torch.set_num_threads(1)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        pool: Executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
    else:
        pool = ThreadPoolExecutor(max(1, workers))
    bar = tqdm(total=n, unit="clip", desc="log-mel cache", disable=not progress)
    try:
        todo = iter(chunks)
        running: dict = {}  # future -> its chunk's first row
        try:
            while True:
                while len(running) < 2 * workers:
                    args = next(todo, None)
                    if args is None:
                        break
                    running[pool.submit(_extract_chunk, *args)] = args[1]
                if meanwhile is not None:
                    meanwhile()
                    meanwhile = None
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done, s, nt = fut.result()
                    parts[running.pop(fut)] = (s, nt)
                    bar.update(done)
        except BaseException:
            for fut in running:
                fut.cancel()
            pool.shutdown(wait=True)
            raise
        # every result is in: the workers exit while the caller goes on (their exit took ~10 ms)
        pool.shutdown(wait=False)
        # in a fixed order, so the statistics are the same bits whatever finished first
        stats: tuple = (0, np.zeros(fcfg.n_mels), np.zeros(fcfg.n_mels))
        notes: list = []
        for start in sorted(parts):
            stats, notes = _merge(stats, parts[start][0]), notes + parts[start][1]
        return stats, notes
    except BrokenExecutor as err:  # a worker died (killed, out of memory)
        raise CacheError(f"a feature worker process died ({err}); nothing of this build is "
                         f"kept") from err
    finally:
        torch.set_num_threads(threads)
        bar.close()


def _worker_init() -> None:
    """In each forked worker: one torch thread; Ctrl-C is the parent's to handle."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _report_notes(notes: list[tuple[str, str]]) -> None:
    """One warning for all the clips that were converted (channels, rate, length) or silent."""
    if not notes:
        return
    from asd.features import AudioWarning

    for path, note in notes:
        log.debug("%s: %s", path, note)
    clips = len({p for p, _ in notes})
    examples = "; ".join(f"{p}: {n}" for p, n in notes[:3])
    warnings.warn(f"{clips} clip(s) were converted to fit the features (or are silent), "
                  f"e.g. {examples}",
                  AudioWarning, stacklevel=4)
