"""Embedding extraction speed on this machine's CPU against the batch size.

``asd.submit`` embeds every clip of a data root with ``asd.method.embed.embed``; on a CPU the batch
size it uses is ``asd.method.embed.CPU_BATCH`` (``asd.method.embed.inference_batch``). This script times
the report's model (random weights: speed does not depend on them) on random log-mels at
several batch sizes, interleaved round by round so that a busy machine slows all alike, and
prints clips/s per batch size (median over rounds) and each one's ratio to the largest batch.

    python -m bench.embed [--clips 512] [--rounds 3] [--batches 16,32,64,128,256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from asd.infra.config import load_config
from asd.method.embed import CPU_BATCH, embed
from asd.method.model import build_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embed", description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="16,32,64,128,256")
    args = p.parse_args(argv)
    cfg = load_config("config.yml")
    torch.manual_seed(0)
    net, _ = build_model(cfg, 1)
    f = cfg.features
    feats = np.random.default_rng(0).normal(size=(args.clips, f.frames, f.n_mels))
    feats = feats.astype(np.float16)
    mean, std = np.zeros(f.n_mels, np.float32), np.ones(f.n_mels, np.float32)
    batches = [int(b) for b in args.batches.split(",")]
    embed(net, feats[:64], mean, std, batch_size=32)  # warm-up: first-call allocations
    times: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            t0 = time.perf_counter()
            embed(net, feats, mean, std, batch_size=b)
            times[b].append(time.perf_counter() - t0)
    print(
        f"embedding {args.clips} clips on CPU ({torch.get_num_threads()} torch threads), "
        f"median of {args.rounds} rounds"
    )
    print(f"{'batch':>6} {'clips/s':>9} {'vs batch ' + str(batches[-1]):>14}")
    base = args.clips / float(np.median(times[batches[-1]]))
    for b in batches:
        rate = args.clips / float(np.median(times[b]))
        mark = "  <- asd.method.embed.CPU_BATCH" if b == CPU_BATCH else ""
        print(f"{b:>6} {rate:>9.0f} {rate / base:>13.2f}x{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
