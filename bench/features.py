"""Feature extraction speed and memory: the cache builder against plain per-clip librosa.

    python -m bench.features [--clips 400] [--repeats 3] [--workers N] [--memory 500,2000]

1. Speed: writes a synthetic data set (asd.synthetic, about ``--clips`` clips of 10 s) into a
   temporary folder, then, in turns, ``repeats`` times each: decoding alone (soundfile), the
   project's log-mel alone (``log_mel_batch`` on 50 decoded clips in turn, one thread), plain
   librosa per clip (``librosa.load`` + ``melspectrogram`` + ``power_to_db``, one process; with
   OpenBLAS's default threads and with one thread), and ``asd.infra.feature_cache.build_cache`` from scratch
   (index, decoding, log-mel, float16 array, stats, index and settings files; the call alone,
   not reading the config before it or deleting the cache after it) with one worker and with
   ``--workers``. Prints clips/s (median and best of the repeats), CPU ms per clip (the
   workers' included), the ratio to the faster librosa variant and how the builder scales from
   one worker to all.
2. Memory: first of all (while this process is small: a child's peak RSS starts from its
   parent's), builds the cache of 500 and of 2,000 noise clips, each in a fresh child process,
   and prints the child's peak RSS, how far it rose above its peak after imports, and the peak
   RSS of its largest worker process (forked, so it counts the pages it shares with the
   builder). Streaming to disk, neither peak may grow with the number of clips.

Numbers depend on the machine and its load; compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the cache workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def noise_root(root: Path, n: int) -> Path:
    """``n`` 10 s noise clips in the challenge layout (fast to write, for the memory runs)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    folder = root / "dev_data" / "fan" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y = (0.05 * rng.standard_normal(160000)).astype(np.float32)
        sf.write(folder / f"section_00_source_train_normal_{i:04d}.wav", y, 16000, subtype="PCM_16")
    return root


def synthetic_root(root: Path, clips: int) -> Path:
    from asd.synthetic import generate

    # two machines, one dev section: per machine n_source + 3 target + 2 x 6 test clips
    n_source = max(1, clips // 2 - 3 - 12)
    return generate(
        root,
        machines=("fan", "valve"),
        dev_sections=("00",),
        eval_sections=(),
        n_source=n_source,
        n_target=3,
        n_test=6,
        duration=10.0,
        seed=0,
        workers=2,
    )


def child_build(root: str, cache_dir: str, workers: int | None) -> None:
    """Run in a fresh process: build the cache, print the peak RSS after imports and at the end
    (KiB; Linux's ru_maxrss)."""
    import torch  # noqa: F401 - counted in the baseline, as in any real run

    from asd.infra.config import load_config
    from asd.infra.feature_cache import build_cache
    from asd.method.features import mel_filterbank

    cfg = load_config(REPO / "config.yml", [f"data.root={root}", f"data.cache_dir={cache_dir}"])
    mel_filterbank(cfg.features)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    cache = build_cache(cfg, progress=False, workers=workers)  # its workers are reaped
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest worker
    print(
        json.dumps(
            {
                "clips": len(cache),
                "before_kb": before,
                "peak_kb": peak,
                "worker_kb": worker,
                "seconds": seconds,
            }
        )
    )


def measure_memory(tmp: Path, sizes: list[int], workers: int | None) -> list[dict]:
    out = []
    for n in sizes:
        root = noise_root(tmp / f"noise{n}", n)
        cmd = [sys.executable, "-m", "bench.features", "--child", str(root), str(tmp / f"c{n}")]
        if workers:
            cmd += ["--workers", str(workers)]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        shutil.rmtree(root)
        shutil.rmtree(tmp / f"c{n}")
    return out


def decode(paths: list[str]) -> None:
    """Decoding alone (soundfile, float32)."""
    import soundfile as sf

    for p in paths:
        sf.read(p, dtype="float32")


def librosa_loop(paths: list[str], fc) -> None:
    """Plain librosa per clip: load, mel spectrogram, power_to_db."""
    import librosa

    for p in paths:
        y, sr = librosa.load(p, sr=fc.sample_rate)
        S = librosa.feature.melspectrogram(
            y=y,
            sr=sr,
            n_fft=fc.n_fft,
            hop_length=fc.hop_length,
            n_mels=fc.n_mels,
            fmin=fc.fmin,
            fmax=fc.fmax,
            power=fc.power,
        )
        librosa.power_to_db(S, ref=1.0, amin=fc.amin, top_db=fc.top_db)


def plain_librosa(paths: list[str], fc, blas_threads: int | None = None) -> None:
    """``librosa_loop`` with OpenBLAS limited to ``blas_threads`` (None: its default)."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    with threadpool_limits(limits=blas_threads):
        librosa_loop(paths, fc)


def log_mel_only(held: list, n: int, fc) -> None:
    """The project's log-mel of ``n`` decoded clips (``held`` in turn), on one thread."""
    import torch

    from asd.method.features import log_mel_batch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(n):
                log_mel_batch(held[i % len(held)], fc)
    finally:
        torch.set_num_threads(threads)


def ours(tmp: Path, root: Path, k, n_workers: int) -> tuple[float, float]:
    """Build from scratch; returns (wall, CPU) seconds of build_cache alone: reading the config
    and deleting the cache afterwards are not feature extraction."""
    from asd.infra.config import load_config
    from asd.infra.feature_cache import build_cache

    cfg = load_config(
        REPO / "config.yml", [f"data.root={root}", f"data.cache_dir={tmp / f'cache{k}'}"]
    )
    start, start_cpu = time.perf_counter(), cpu_seconds()
    build_cache(cfg, progress=False, workers=n_workers)  # its workers are reaped
    spent = time.perf_counter() - start, cpu_seconds() - start_cpu
    shutil.rmtree(tmp / f"cache{k}")
    return spent


def write_speed_data(tmp: Path, clips: int, workers: int, cores: int) -> tuple[Path, list[str]]:
    """The synthetic data set of the speed runs and its clips' paths; prints what was written."""
    from asd.infra.data import index_dataset

    t = time.perf_counter()
    root = synthetic_root(tmp / "synth", clips)
    paths = list(index_dataset(root)["path"])
    print(
        f"{len(paths)} synthetic clips of 10 s written in {time.perf_counter() - t:.0f} s "
        f"({workers} builder worker(s); machine: {cores} usable cores)"
    )
    return root, paths


def measure_speed(
    tmp: Path, root: Path, paths: list[str], workers: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Clips per second and CPU ms per clip (all threads) of each variant, ``repeats`` times,
    the variants in turns."""
    import torch

    from asd.infra.config import load_config
    from asd.method.features import load_audio

    n = len(paths)
    fc = load_config(REPO / "config.yml").features
    held = [torch.from_numpy(load_audio(p, fc))[None] for p in paths[:50]]
    decode(paths)  # warm the page cache and librosa's lazy imports for everyone
    plain_librosa(paths, fc)
    ours(tmp, root, "warm", workers)
    names = ("decode", "logmel", "librosa", "librosa1", "asd1", "asd")
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}  # CPU ms per clip, all threads
    for k in range(repeats):
        for name, fn in (
            ("decode", lambda: decode(paths)),
            ("logmel", lambda: log_mel_only(held, n, fc)),
            ("librosa", lambda: plain_librosa(paths, fc)),
            ("librosa1", lambda: plain_librosa(paths, fc, 1)),
            ("asd1", lambda k=k: ours(tmp, root, k, 1)),
            ("asd", lambda k=k: ours(tmp, root, k, workers)),
        ):
            # OpenBLAS's threads spin for ~0.1 s after librosa (or a changed thread limit)
            # used them: let them go idle, or they count towards the next row
            time.sleep(0.3)
            start, start_cpu = time.perf_counter(), cpu_seconds()
            spent = fn() or (time.perf_counter() - start, cpu_seconds() - start_cpu)
            rates[name].append(n / spent[0])
            cpu[name].append(spent[1] / n * 1e3)
    return rates, cpu


def print_speed(rates: dict[str, list[float]], cpu: dict[str, list[float]], workers: int) -> None:
    """The speed table and the ratios between its rows."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    cpu_ms = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{'':44s}{'median':>10s}{'best':>10s}  clips/s  {'CPU ms/clip':>12s}")
    labels = {
        "decode": "decoding only (soundfile, 1 thread)",
        "logmel": "asd log-mel only (decoded clips, 1 thread)",
        "librosa": "librosa per clip, 1 process, BLAS default",
        "librosa1": "librosa per clip, 1 process, BLAS 1 thread",
        "asd1": "asd build_cache (1 worker, to disk)",
        "asd": f"asd build_cache ({workers} worker(s), to disk)",
    }
    for k, label in labels.items():
        print(f"{label:44s}{med[k]:10.0f}{best[k]:10.0f}  {'':7s}{cpu_ms[k]:12.2f}")
    # against the faster librosa variant: OpenBLAS threads help it on an idle machine and
    # hurt it badly on a loaded one
    lib_med = max(med["librosa"], med["librosa1"])
    lib_best = max(best["librosa"], best["librosa1"])
    print(
        f"speed-up of build_cache over the faster plain librosa: "
        f"{med['asd'] / lib_med:.1f}x (median), {best['asd'] / lib_best:.1f}x (best)"
    )
    # wall clock on a shared machine depends on the others' load; CPU time much less so
    lib_cpu = min(cpu_ms["librosa"], cpu_ms["librosa1"])
    print(
        f"CPU time per clip, librosa / build_cache (workers included): "
        f"{lib_cpu / cpu_ms['asd']:.1f}x"
    )
    print(
        f"build_cache with {workers} worker(s) / with 1: {med['asd'] / med['asd1']:.2f}x (median)"
    )


def print_memory(memory: list[dict]) -> None:
    """One line per memory run."""
    for r in memory:
        print(
            f"peak RSS building {r['clips']:5d} clips: {r['peak_kb'] / 1024:7.0f} MiB "
            f"({(r['peak_kb'] - r['before_kb']) / 1024:5.0f} MiB above the "
            f"{r['before_kb'] / 1024:.0f} MiB after imports), largest worker "
            f"{r['worker_kb'] / 1024:.0f} MiB; {r['clips'] / r['seconds']:.0f} clips/s"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__)
    parser.add_argument("--clips", type=int, default=400, help="synthetic clips for the speed test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the cache builder (default: the usable cores)",
    )
    parser.add_argument(
        "--memory", default="500,2000", help="clip counts of the memory runs ('' skips them)"
    )
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "CACHE_DIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.child:
        child_build(*ns.child, ns.workers)
        return 0

    cores = len(os.sched_getaffinity(0))
    workers = ns.workers or cores
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp_name:
        tmp = Path(tmp_name)
        # First of all, while this process is small: a child's peak RSS starts from its parent's.
        sizes = [int(s) for s in ns.memory.split(",") if s.strip()]
        memory = measure_memory(tmp, sizes, ns.workers) if sizes else []
        root, paths = write_speed_data(tmp, ns.clips, workers, cores)
        rates, cpu = measure_speed(tmp, root, paths, workers, ns.repeats)
        print_speed(rates, cpu, workers)
        print_memory(memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
