"""``python -m asd.synthetic [ROOT] [--config C] [options]``: write the synthetic data set."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from asd.synthetic.dataset import generate
from asd.synthetic.designs import DEV_SECTIONS, EVAL_SECTIONS, MACHINES

def _names(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.replace(" ", ",").split(",") if p)


def main(argv: list[str] | None = None) -> int:
    from asd.index import resolve_root, split_args

    p = argparse.ArgumentParser(prog="python -m asd.synthetic",
                                description="Write the synthetic DCASE 2021 Task 2 data set.")
    p.add_argument("args", nargs="*", metavar="[ROOT] [key.sub=value]",
                   help="output folder (default: data.root of the config) and config overrides")
    p.add_argument("--config", default=None, help="config file (default: config.yml)")
    p.add_argument("--machines", type=_names, default=MACHINES,
                   help="comma-separated machine types")
    p.add_argument("--sections-dev", type=_names, default=DEV_SECTIONS,
                   help="development sections, comma-separated ('' for none)")
    p.add_argument("--sections-eval", type=_names, default=EVAL_SECTIONS,
                   help="evaluation sections, comma-separated ('' for none)")
    p.add_argument("--n-source", type=int, default=100, help="source training clips per section")
    p.add_argument("--n-target", type=int, default=3, help="target training clips per section")
    p.add_argument("--n-test", type=int, default=40,
                   help="test clips per section and domain (half anomalous)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes writing clips (default: the cores, at most 8)")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root, overrides = split_args(ns.args)
    try:
        root = resolve_root(root, ns.config, overrides)
        generate(root, machines=ns.machines, dev_sections=ns.sections_dev,
                 eval_sections=ns.sections_eval, n_source=ns.n_source, n_target=ns.n_target,
                 n_test=ns.n_test, duration=ns.duration, seed=ns.seed, workers=ns.workers,
                 progress=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(root)
    return 0
