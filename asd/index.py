"""Clip counts of a data root per machine, section, domain, split and label.

``python -m asd.index [ROOT] [--config C] [key.sub=value ...]``: normal, anomalous and unlabelled
clips per (dataset, machine, section, domain, split); ROOT defaults to the config's ``data.root``.
"""

from __future__ import annotations

import pandas as pd

from asd.infra.cli import make_parser, run_command
from asd.infra.config import load_config
from asd.infra.data import DataError, index_dataset, report_order


def counts_table(index_df: pd.DataFrame) -> pd.DataFrame:
    """Clip counts per (dataset, machine, section, domain, split) and label, with a total column."""
    keys = ["dataset", "machine", "section", "domain", "split"]
    table = pd.crosstab([index_df[k] for k in keys], index_df["label"].fillna("unlabelled"))
    table = table.reindex(columns=[c for c in ("normal", "anomaly", "unlabelled") if c in table])
    return report_order(table.assign(total=table.sum(axis=1)).reset_index(), keys)


def resolve_root(items: list[str], config: str | None) -> str:
    """The ROOT among ``items`` (those without '=') if given, else the config's data.root; the
    config, with the ``key.sub=value`` items as overrides, is only checked when it matters."""
    roots, overrides = [a for a in items if "=" not in a], [a for a in items if "=" in a]
    if len(roots) > 1:
        raise DataError(f"expected at most one ROOT, got {roots}")
    if roots and config is None and not overrides:
        return roots[0]
    cfg = load_config(config or "config.yml", overrides)
    return roots[0] if roots else cfg.data.root


def _main(args) -> None:
    root = resolve_root(args.args, args.config)
    df = index_dataset(root)
    table = counts_table(df).replace({"dataset": {"": "-"}})
    print(
        f"{root}: {len(df)} clips, {df['machine'].nunique()} machine types, "
        f"{int(df['class'].max()) + 1} classes (machine, section, domain) with training clips"
    )
    print(table.to_string(index=False))  # every row, never wrapped


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("asd.index", __doc__, overrides=False)
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[ROOT] [key.sub=value]",
        help="data root (default: data.root of the config) and config overrides",
    )
    return run_command(_main, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
