"""Build (or reuse) the log-mel cache of data.root; prints the cache folder as the last line.

The cache itself (its files, locking and workers) is ``asd.infra.feature_cache``.
"""

from __future__ import annotations

import argparse

from asd.infra.cli import load_args_config, make_parser, run_command
from asd.infra.feature_cache import build_cache


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("asd.cache", __doc__)
    parser.add_argument("--root", help="data root (default: data.root)")
    parser.add_argument("--workers", type=int, help="worker processes (default: usable cores)")
    return run_command(_main, parser, argv)


def _main(args: argparse.Namespace) -> None:
    cache = build_cache(load_args_config(args), root=args.root, workers=args.workers)
    print(f"{len(cache)} clips, features {tuple(cache.features.shape)} {cache.features.dtype}")
    print(cache.path)


if __name__ == "__main__":
    raise SystemExit(main())
