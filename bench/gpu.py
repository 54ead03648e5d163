"""Step 1 on one GPU: speed of the engines on the path users run, where the host's time goes,
peak memory, projected run times, and the first steps' loss against the CPU.

First the CPU reference (with its own time budget, ``--cpu-budget``): the loss of the first 50
steps at a small batch. Then, for each of ``gpu`` (fp32; convolutions in TF32 as PyTorch's
default), ``amp`` bf16, ``amp`` fp16 and ``amp`` bf16 with the model in channels_last, a fresh
process trains the report's model with the project's runner (runners.common.MixupRunner,
runners.stage1.Stage1's step, asd.method.sampling.MixupBatches, MaskedAdamP) on a feature cache
of the real data set's size (59,514 clips x 313 frames x 128 mels, float16, random values) at
batch 256, on the default data path (the training rows held in GPU memory where they fit, else
read ahead from the memory map: the row says which), and prints:

- samples/s and ms a step over the timed epochs (the runner's own measure, after warm-up epochs
  that include cuDNN's algorithm search);
- from torch.profiler over one more epoch: the share of a step the host spends in PyTorch
  operations and CUDA calls (launching; with the profiler's own overhead, so an upper bound),
  the share the GPU is busy, and kernel launches a step;
- peak GPU memory (the cache held on the device included);
- the projected time of a full Step 1 (24,750 iterations) and Step 2 (5,000 iterations; it trains
  only the last stage and the head, so this is an upper bound);
- the loss of the first 50 steps (at a smaller batch, so that the CPU's run stays short) beside
  the CPU's on the same seed and batches, and whether they agree within the stated tolerance.

Without a CUDA GPU it says so in one line and exits with status 1.

    python -m bench.gpu [--steps 30] [--timed 2] [--compare-steps 50] [--compare-batch 64]
                        [--cpu-budget 300] [--budget 300] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from asd.infra.config import load_config
from asd.infra.data import COLUMNS, class_table
from asd.infra.feature_cache import FORMAT
from asd.infra.training import check_config
from asd.method.steps import Schedule
from runners.common import MixupRunner, make_engine
from runners.stage1 import Stage1

REPO = Path(__file__).resolve().parents[1]
MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
PER_SECTION = {
    ("source", "train"): 1000,
    ("target", "train"): 3,
    ("source", "test"): 207,
    ("target", "test"): 207,
}  # x 7 machines x 6 sections: 59,514 clips
ENGINES = {  # name: (config overrides, model in channels_last)
    "gpu (fp32/TF32)": (["engine.name=gpu"], False),
    "amp bf16": (["engine.name=amp", "engine.amp_dtype=bf16"], False),
    "amp fp16": (["engine.name=amp", "engine.amp_dtype=fp16"], False),
    "amp bf16 channels_last": (["engine.name=amp", "engine.amp_dtype=bf16"], True),
}
# largest |loss - CPU loss| / CPU loss over the compared steps that still counts as agreement
TOLERANCE = {"gpu": 0.02, "amp": 0.05}
STEP1_ITERATIONS, STEP2_ITERATIONS = 24_750, 5_000


def make_cache(
    folder: Path,
    per_section: dict = PER_SECTION,
    machines=MACHINES,
    sections=("00", "01", "02", "03", "04", "05"),
    frames: int = 313,
    mels: int = 128,
) -> Path:
    """A complete feature cache folder (asd.cache's files) of random float16 log-mels."""
    rows = [
        (m, s, d, split)
        for m in machines
        for s in sections
        for (d, split), n in per_section.items()
        for _ in range(n)
    ]
    index = pd.DataFrame(rows, columns=["machine", "section", "domain", "split"])
    index["dataset"] = np.where(index["section"] < "03", "dev_data", "eval_data")
    index["index"] = index.groupby(["machine", "section", "domain", "split"]).cumcount()
    index["file"] = [
        f"section_{s}_{d}_{split}_{i:04d}.wav"
        for s, d, split, i in zip(index["section"], index["domain"], index["split"], index["index"])
    ]
    index["path"] = index["file"]
    index["label"] = np.where(index["split"] == "test", "normal", "")
    index["attributes"], index["class"] = "", 0
    folder.mkdir(parents=True, exist_ok=True)
    index[COLUMNS].to_csv(folder / "index.csv", index=False)
    features = np.lib.format.open_memmap(
        folder / "features.npy", mode="w+", dtype=np.float16, shape=(len(index), frames, mels)
    )
    block = np.random.default_rng(0).normal(-40, 10, size=(256, frames, mels)).astype(np.float16)
    for start in range(0, len(index), len(block)):  # shifted copies of one random block
        stop = min(len(index), start + len(block))
        features[start:stop] = block[: stop - start] + np.float16(start % 13)
    features.flush()
    np.savez(
        folder / "stats.npz", mean=np.full(mels, -34, np.float32), std=np.full(mels, 11, np.float32)
    )
    (folder / "settings.json").write_text(json.dumps({"format": FORMAT, "complete": True}))
    return folder


class BenchStep(Stage1):
    """Step 1 with a short schedule: ``plan`` = (epochs, iterations per epoch)."""

    plan = (1, 1)

    def schedule(self) -> Schedule:
        epochs, iterations_per_epoch = self.plan
        return Schedule(
            epochs=epochs,
            iterations_per_epoch=iterations_per_epoch,
            iterations=epochs * iterations_per_epoch,
            checkpoint_every=epochs,
        )


class BenchRunner(MixupRunner):
    """The project's runner, without logs; keeps every step's loss (on the device), and runs
    its last epoch under torch.profiler where ``profile`` is set."""

    channels_last = False
    profile = False

    def __init__(self, step: BenchStep) -> None:
        super().__init__(step)
        self.losses = []
        self.profiler = None

    def on_epoch_start(self, runner):
        super().on_epoch_start(runner)
        if self.profile and self.epoch_step == self.num_epochs:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_epoch_end(self, runner):
        if self.profiler is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
        super().on_epoch_end(runner)

    def data_path(self) -> str:
        """Where the batches came from: the device cache or the memory map (read ahead)."""
        on_device = self.loaders["train"]._device_features is not None
        return "device cache" if on_device else "memory map"

    def get_loggers(self):
        return {}

    def get_model(self):
        model = super().get_model()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def on_batch_end(self, runner):
        super().on_batch_end(runner)
        self.losses.append(self.batch_metrics["loss"])


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def profile_summary(profiler: torch.profiler.profile, steps: int) -> dict:
    """Per step: ms the host spends in PyTorch operations and CUDA calls (the self time of every
    host event: nested ones count once), ms of GPU kernels, and kernel launches."""
    host_us = device_us = launches = 0.0
    for event in profiler.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_us += event.self_device_time_total
        else:
            host_us += event.self_cpu_time_total
        if event.key in LAUNCHES:
            launches += event.count
    return {
        "host_ms": host_us / 1e3 / steps,
        "device_ms": device_us / 1e3 / steps,
        "launches": launches / steps,
    }


def train(
    cfg,
    cache: Path,
    run_dir: Path,
    plan: tuple[int, int],
    channels_last: bool,
    profile: bool = False,
):
    """Train ``plan`` (epochs, iterations per epoch) of Step 1 as runners.stage1 would; with
    ``profile``, the last epoch under torch.profiler."""
    check_config(cfg, "stage1")
    index = pd.read_csv(cache / "index.csv", dtype=str, keep_default_na=False)
    classes = class_table(index)
    n_source = int(((index["split"] == "train") & (index["domain"] == "source")).sum())
    run_dir.mkdir(parents=True, exist_ok=True)
    step = BenchStep(
        cfg=cfg,
        run_dir=run_dir,
        cache=cache,
        classes=classes.to_dict("list"),
        n_source=n_source,
        progress=False,
    )
    step.plan = plan
    runner = BenchRunner(step)
    runner.channels_last = channels_last
    runner.profile = profile
    runner.train(
        loaders={},
        engine=make_engine(cfg),
        seed=cfg.stage1.seed,
        num_epochs=plan[0],
        hparams=cfg.to_dict(),
    )
    return runner


def child(name: str, cache: Path, tmp: Path, args) -> dict:
    """One engine in this process: the loss comparison run, then (not on the CPU) the timed."""
    overrides, channels_last = ENGINES.get(name, (["engine.name=cpu"], False))
    cfg = load_config(REPO / "config.yml", [*overrides, *args.overrides])
    compare = cfg.replace(
        **{"stage1.batch_size": args.compare_batch, "engine.cache_on_device": False}
    )
    half = math.ceil(args.compare_steps / 2)
    runner = train(compare, cache, tmp / "compare", (2, half), channels_last)
    out = {"losses": torch.stack(runner.losses).tolist()[: args.compare_steps]}
    if name == "cpu":
        return out
    del runner
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    epochs = args.warmup + args.timed + 1  # the last one under the profiler
    runner = train(cfg, cache, tmp / "speed", (epochs, args.steps), channels_last, profile=True)
    rates = [
        runner.experiment_metrics[e]["train"]["samples_per_s"]
        for e in range(args.warmup + 1, epochs)
    ]
    samples = args.steps * cfg.stage1.batch_size
    seconds = sum(samples / r for r in rates)
    ms_per_step = 1e3 * seconds / (len(rates) * args.steps)
    profiled = profile_summary(runner.profiler, args.steps)
    return {
        **out,
        "data_path": runner.data_path(),
        "samples_per_s": samples * len(rates) / seconds,
        "ms_per_step": ms_per_step,
        "host_share": profiled["host_ms"] / ms_per_step,
        "device_share": profiled["device_ms"] / ms_per_step,
        "launches": profiled["launches"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "batch": cfg.stage1.batch_size,
        "stage2_batch": cfg.stage2.batch_size,
    }


def run_child(name: str, cache: Path, tmp: Path, args, seconds: float) -> dict:
    """``child`` in a fresh process (accelerate keeps one precision per process)."""
    if seconds < 20:
        return {"error": "skipped: the time budget (--budget) is spent"}
    cmd = [
        sys.executable,
        "-m",
        "bench.gpu",
        "--child",
        name,
        "--cache",
        str(cache),
        "--tmp",
        str(tmp),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--timed",
        str(args.timed),
        "--compare-steps",
        str(args.compare_steps),
        "--compare-batch",
        str(args.compare_batch),
        *args.overrides,
    ]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {seconds:.0f} s (the time budget, --budget)"}
    if out.returncode != 0:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        return {"error": lines[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def minutes(iterations: int, batch: int, rate: float) -> str:
    return f"{iterations * batch / rate / 60:.1f} min"


def row(r: dict) -> str:
    """One engine's line of the speed table (its error where it has no result)."""
    if "error" in r:
        return r["error"]
    rate = r["samples_per_s"]
    return (
        f"{r['data_path']:>12s} {rate:10.0f} {r['ms_per_step']:8.1f} {r['host_share']:5.0%} "
        f"{r['device_share']:5.0%} {r['launches']:8.0f} {r['peak_gib']:9.2f} "
        f"{minutes(STEP1_ITERATIONS, r['batch'], rate):>9s} "
        f"{minutes(STEP2_ITERATIONS, r['stage2_batch'], rate):>9s}"
    )


def report(results: dict, args) -> int:
    """Print the comparison with the CPU; 1 where a result is missing or does not agree."""
    cpu, status = results.get("cpu", {}), 0
    print(
        f"\nfirst {args.compare_steps} steps' loss at batch {args.compare_batch} against the "
        f"CPU (same seed and batches); agreement: the largest |loss - CPU| / CPU at most "
        f"{TOLERANCE['gpu']:.0%} (gpu), {TOLERANCE['amp']:.0%} (amp)"
    )
    if "losses" not in cpu:
        print(f"  CPU reference: {cpu.get('error', 'not run')}")
        return 1
    ref = np.array(cpu["losses"])
    print(
        f"  {'engine':24s} {'loss step 1':>12s} {f'step {len(ref)}':>10s} "
        f"{'largest diff':>13s}  agrees"
    )
    print(f"  {'cpu':24s} {ref[0]:12.4f} {ref[-1]:10.4f}")
    for name in ENGINES:
        r = results.get(name, {})
        if "losses" not in r:
            print(f"  {name:24s} {r.get('error', 'not run')}")
            status = 1
            continue
        loss = np.array(r["losses"])
        diff = float(np.max(np.abs(loss - ref) / np.abs(ref)))
        ok = diff <= TOLERANCE[name.split()[0]]
        status |= not ok
        print(
            f"  {name:24s} {loss[0]:12.4f} {loss[-1]:10.4f} {diff:12.2%}  {'yes' if ok else 'NO'}"
        )
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="iterations per epoch of the timed run")
    p.add_argument("--warmup", type=int, default=1, help="epochs before the timed ones")
    p.add_argument("--timed", type=int, default=2, help="timed epochs")
    p.add_argument("--compare-steps", type=int, default=50)
    p.add_argument("--compare-batch", type=int, default=64)
    p.add_argument(
        "--cpu-budget",
        type=float,
        default=300,
        help="seconds for the CPU reference, which runs first",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=300,
        help="seconds for the GPU engines; those still to run when it is spent are skipped",
    )
    p.add_argument("--tmp", default=None, help="folder for the 4.8 GB cache (default: /tmp)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.cache), Path(args.tmp), args)))
        return 0
    if not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA GPU is visible; it measures training on a GPU only", file=sys.stderr
        )
        return 1
    start = time.perf_counter()
    gpu = torch.cuda.get_device_properties(0)
    print(
        f"{gpu.name} ({gpu.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}, TF32: matmul "
        f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}"
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        cache = make_cache(Path(tmp) / "cache")
        shape = np.load(cache / "features.npy", mmap_mode="r").shape
        print(
            f"feature cache: {shape[0]:,} clips x {shape[1]} x {shape[2]} float16 (random), "
            f"{(cache / 'features.npy').stat().st_size / 1e9:.2f} GB, written in "
            f"{time.perf_counter() - start:.0f} s"
        )
        batch = load_config(REPO / "config.yml", args.overrides).stage1.batch_size
        print(
            f"Step 1 at batch {batch}: {args.warmup} warm-up and {args.timed} timed epochs of "
            f"{args.steps} iterations per engine; goal: Step 1 in 10 min (10,500 samples/s)"
        )
        results = {"cpu": run_child("cpu", cache, Path(tmp) / "cpu", args, args.cpu_budget)}
        print(f"CPU reference: {results['cpu'].get('error', 'done')}", flush=True)
        print(
            f"  {'engine':24s} {'data path':>12s} {'samples/s':>10s} {'ms/step':>8s} "
            f"{'host':>5s} {'GPU':>5s} {'launches':>8s} {'peak GiB':>9s} {'Step 1':>9s} "
            f"{'Step 2 <=':>9s}",
            flush=True,
        )
        start_gpu = time.perf_counter()
        for name in ENGINES:
            left = args.budget - (time.perf_counter() - start_gpu)
            folder = Path(tmp) / name.replace(" ", "-")
            results[name] = run_child(name, cache, folder, args, left)
            print(f"  {name:24s} {row(results[name])}", flush=True)
        print(
            "  host: share of a step the host spends in PyTorch ops and CUDA calls (profiler, "
            "an upper bound); GPU: share the GPU runs kernels; launches: kernels a step"
        )
        status = report(results, args)
    print(f"\nbench.gpu took {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
