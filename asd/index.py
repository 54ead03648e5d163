"""Clip counts of a data root per machine, section, domain, split and label.

``python -m asd.index [ROOT] [--config C] [key.sub=value ...]``: normal, anomalous and unlabelled
clips per (dataset, machine, section, domain, split); ROOT defaults to the config's ``data.root``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from asd.infra.cli import make_parser, run_command
from asd.infra.config import load_config
from asd.infra.data import (
    DataError,
    class_mode,
    class_table,
    detect_layout,
    index_dataset,
    report_order,
)

# make demo's config: its data root is the synthetic data set.
DEMO_CONFIG = "configs/demo.yml"


def counts_table(index_df: pd.DataFrame) -> pd.DataFrame:
    """Clip counts per (dataset, machine, section, domain, split) and label, with a total column."""
    keys = ["dataset", "machine", "section", "domain", "split"]
    # crosstab drops rows with a missing key, so clips without a domain (evaluation names from
    # 2022 on) or without a label are counted under a name of their own.
    columns = [index_df[k].fillna("unknown") if k == "domain" else index_df[k] for k in keys]
    table = pd.crosstab(columns, index_df["label"].fillna("unlabelled"))
    # The label columns in a fixed order, only those the data has.
    labels = [c for c in ("normal", "anomaly", "unlabelled") if c in table]
    table = table.reindex(columns=labels)
    return report_order(table.assign(total=table.sum(axis=1)).reset_index(), keys)


def resolve_root(items: list[str], config: str | None) -> str:
    """The ROOT among ``items`` (those without '=') if given, else the config's data.root; the
    config, with the ``key.sub=value`` items as overrides, is only checked when it matters."""
    roots = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    if len(roots) > 1:
        raise DataError(f"expected at most one ROOT, got {roots}")
    # A ROOT alone needs no config, so the command works where there is no config.yml.
    if roots and config is None and not overrides:
        return roots[0]
    cfg = load_config(config or "config.yml", overrides)
    return roots[0] if roots else cfg.data.root


def _configured(args):
    """The config of the command line (its overrides among the items), for data.layout and
    data.classes; config.yml's defaults where there is none."""
    overrides = [a for a in args.args if "=" in a]
    path = args.config or "config.yml"
    # Without any config the layout and the classes are detected from the data.
    if args.config is None and not overrides and not Path(path).is_file():
        return None
    return load_config(path, overrides)


def missing_root(root: str | Path) -> str:
    """What to say when the data root does not exist: how to get the real data, and where the
    demo's synthetic data is (or how to make it)."""
    # Outside a checkout there is no demo config, and only the advice to make one is left.
    demo = Path(load_config(DEMO_CONFIG).data.root) if Path(DEMO_CONFIG).is_file() else None
    if demo is not None and demo.is_dir():
        other = f"the demo's synthetic data is in {demo}: make index CONFIG={DEMO_CONFIG}"
    else:
        other = "make synth (or make demo) writes a synthetic data set"
    return (
        f"data root {root} does not exist; make data downloads the real data into it "
        f"(about 19 GB, docs/data.md), or {other}"
    )


def _main(args) -> None:
    root = resolve_root(args.args, args.config)
    if not Path(root).exists():
        raise DataError(missing_root(root))
    cfg = _configured(args)
    layout = detect_layout(root, cfg.data.layout if cfg else "auto")
    df = index_dataset(root, layout)
    mode = class_mode(cfg.data.classes if cfg else "auto", layout)
    classes = class_table(df, mode)
    # Layouts of one data set have an empty dataset name, which to_string would print as blank.
    table = counts_table(df).replace({"dataset": {"": "-"}})
    what = "machine, section, domain" + (", attributes" if mode == "attributes" else "")
    print(
        f"{root}: {layout.name} layout, {len(df)} clips, {df['machine'].nunique()} machine "
        f"types, {len(classes)} classes ({what}) with training clips"
    )
    # to_string prints every row, never wrapped, where printing the frame would elide some.
    print(table.to_string(index=False))


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
