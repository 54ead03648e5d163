"""Step 1 training speed: the project's data path against a plain Dataset + DataLoader.

Both feed the same model (EmbeddingNet + sub-cluster AdaCos, channels_last, AdamP) from the
same float16 feature cache on disk, in the same run:

- project: ``asd.method.sampling.MixupBatches`` gathers whole batches of rows from the memory-mapped
  cache where the model runs, and mixup happens in the training step;
- plain: a ``Dataset`` whose items load two cached clips each, and a ``collate_fn`` that mixes
  them, through a ``DataLoader`` (no worker processes: the two cores train the model).

Prints samples/s for both, their ratio and the share of each step spent outside the model.
With ``--memory`` it also builds a full-size cache (42,000 source clips, ~3.4 GB, random
features) and reports the peak memory of a CPU Step 1 on it, in a fresh process: the cache is
memory-mapped, so the process's own (anonymous) memory must stay far below the cache's size.

    python -m bench.train [--clips 2000] [--batch 64] [--steps 8] [--memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asd.infra.config import load_config
from asd.method.losses import kl_loss, mixup
from asd.method.model import build_model
from asd.method.optim import build_optimizer
from asd.method.sampling import MixupBatches

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 42  # source classes of the full data set


def make_cache(path: Path, n: int, frames: int, mels: int, seed: int = 0) -> np.ndarray:
    """A float16 (n, frames, mels) .npy of random log-mel-like values, written in chunks."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, frames, mels))
    rng = np.random.default_rng(seed)
    block = rng.normal(-40, 10, size=(64, frames, mels)).astype(np.float16)
    for start in range(0, n, 64):
        stop = min(n, start + 64)
        out[start:stop] = block[: stop - start] + np.float16(start % 7)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


class PairDataset(torch.utils.data.Dataset):
    """The plain reference: each item loads two random cached clips (normalised)."""

    def __init__(self, features, mean, std, labels, n_items, seed):
        self.features, self.mean, self.istd = features, mean, 1.0 / std
        self.labels, self.n_items = labels, n_items
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.n_items

    def __getitem__(self, i):
        a, b = self.rng.integers(len(self.features), size=2)
        x_a = torch.from_numpy((self.features[a].astype(np.float32) - self.mean) * self.istd)
        x_b = torch.from_numpy((self.features[b].astype(np.float32) - self.mean) * self.istd)
        return x_a, x_b, int(self.labels[a]), int(self.labels[b]), float(self.rng.random())


def mix_collate(items):
    x_a, x_b, y_a, y_b, lam = zip(*items)
    lam = torch.tensor(lam)
    y_a = F.one_hot(torch.tensor(y_a), N_CLASSES).float()
    y_b = F.one_hot(torch.tensor(y_b), N_CLASSES).float()
    x, y = mixup(torch.stack(x_a).unsqueeze(1), torch.stack(x_b).unsqueeze(1), y_a, y_b, lam)
    return x, y


def build(cfg):
    torch.manual_seed(0)
    net, head = build_model(cfg, N_CLASSES)
    net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(list(net.parameters()) + list(head.parameters()), "adamp", 1e-3, 1e-5)
    return net, head, opt


def model_step(net, head, opt, x, y) -> None:
    x = x.contiguous(memory_format=torch.channels_last)
    loss = kl_loss(head(net(x), y), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _timed(cfg, batches, steps):
    """(data seconds, model seconds) over ``steps`` steps of (x, y) from ``batches``; the first
    step warms up and is not timed."""
    net, head, opt = build(cfg)
    data_t = model_t = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        model_step(net, head, opt, x, y)
        t2 = time.perf_counter()
        if i:
            data_t += t1 - t0
            model_t += t2 - t1
    return data_t, model_t


def run_project(cfg, features, mean, std, labels, batch, steps):
    rows = np.arange(len(features))
    batches = MixupBatches(
        features,
        mean,
        std,
        labels,
        rows,
        rows,
        batch_size=batch,
        iterations_per_epoch=steps + 1,
        iterations=steps + 1,
        seed=0,
    )

    def mixed():  # what the runner's handle_batch does before the model
        for b in batches:
            y_a = F.one_hot(b["y_a"], N_CLASSES).float()
            y_b = F.one_hot(b["y_b"], N_CLASSES).float()
            yield mixup(b["x_a"], b["x_b"], y_a, y_b, b["lam"])

    return _timed(cfg, mixed(), steps)


def run_plain(cfg, features, mean, std, labels, batch, steps):
    data = PairDataset(features, mean, std, labels, batch * (steps + 1), seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=mix_collate)
    return _timed(cfg, iter(loader), steps)


def speed(args) -> None:
    cfg = load_config(REPO / "config.yml")
    f = cfg.features
    with tempfile.TemporaryDirectory() as tmp:
        features = make_cache(Path(tmp) / "features.npy", args.clips, f.frames, f.n_mels)
        mean = np.full(f.n_mels, -40, np.float32)
        std = np.full(f.n_mels, 10, np.float32)
        labels = np.arange(args.clips) % N_CLASSES
        print(
            f"Step 1 on CPU ({torch.get_num_threads()} threads), batch {args.batch}, "
            f"{args.steps} timed steps, cache of {args.clips} clips (float16, memory-mapped)"
        )
        best = {}
        for _ in range(args.rounds):  # interleaved rounds: both see the same machine state
            for name, fn in (
                ("project (MixupBatches)", run_project),
                ("plain Dataset + DataLoader", run_plain),
            ):
                data_t, model_t = fn(cfg, features, mean, std, labels, args.batch, args.steps)
                if name not in best or data_t + model_t < sum(best[name]):
                    best[name] = (data_t, model_t)
        rows = []
        print(f"{'data path':28s} {'samples/s':>10s} {'data ms/batch':>14s} {'outside model':>14s}")
        for name, (data_t, model_t) in best.items():
            total = data_t + model_t
            rows.append((name, args.batch * args.steps / total, data_t / total))
            print(
                f"{name:28s} {rows[-1][1]:10.1f} {1e3 * data_t / args.steps:14.1f} "
                f"{data_t / total:13.1%}"
            )
        (_, (dp, _)), (_, (dr, _)) = best.items()
        print(
            f"ratio project / plain: {rows[0][1] / rows[1][1]:.2f}x per step, "
            f"{dr / dp:.1f}x faster data path alone"
        )


def status_kb(field: str) -> int:
    """A memory field of this process (Linux ``/proc/self/status``), in kB: the anonymous
    (``RssAnon``) part is what the process allocated itself, unlike mapped cache pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(cache: str, steps: int, batch: int) -> None:
    """In a fresh process: Step 1 steps over the full-size cache; prints peak memory as JSON."""
    cfg = load_config(REPO / "config.yml")
    features = np.load(cache, mmap_mode="r")
    n = len(features)
    mean = np.full(cfg.features.n_mels, -40, np.float32)
    std = np.full(cfg.features.n_mels, 10, np.float32)
    labels = np.arange(n) % N_CLASSES
    base = status_kb("RssAnon")
    run_project(cfg, features, mean, std, labels, batch, steps)
    print(
        json.dumps(
            {
                "clips": n,
                "cache_mb": features.nbytes / 2**20,
                "peak_rss_mb": status_kb("VmHWM") / 1024,
                "anon_mb": status_kb("RssAnon") / 1024,
                "anon_before_mb": base / 1024,
            }
        )
    )


def memory(args) -> None:
    cfg = load_config(REPO / "config.yml")
    f = cfg.features
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "features.npy"
        t = time.perf_counter()
        make_cache(path, 42_000, f.frames, f.n_mels)
        print(
            f"\nfull-size cache: 42,000 clips, {path.stat().st_size / 2**30:.2f} GiB "
            f"(written in {time.perf_counter() - t:.0f} s)"
        )
        for steps in (4, 16):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.train",
                    "--child",
                    str(path),
                    "--steps",
                    str(steps),
                    "--batch",
                    str(args.batch),
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
                check=True,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"CPU Step 1, {steps:2d} steps of {args.batch}: peak RSS "
                f"{m['peak_rss_mb']:.0f} MiB (process-own memory {m['anon_mb']:.0f} MiB) "
                f"for a {m['cache_mb']:.0f} MiB cache"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts")
    p.add_argument("--memory", action="store_true", help="also the full-size cache's peak memory")
    p.add_argument("--tmp", default=None, help="folder for the 3.4 GB cache of --memory")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        memory_child(args.child, args.steps, args.batch)
        return
    speed(args)
    if args.memory:
        memory(args)


if __name__ == "__main__":
    main()
