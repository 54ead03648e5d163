"""``python -m asd.index``: the clip counts of a data root per machine, section, domain, split
and label."""

from __future__ import annotations

from asd.index import counts_table
from asd.index import main as index_main
from asd.infra.data import index_dataset


def test_counts_table_and_cli(tiny_data, capsys):
    table = counts_table(index_dataset(tiny_data))
    row = table[
        (table["dataset"] == "dev_data")
        & (table["machine"] == "fan")
        & (table["domain"] == "source")
        & (table["split"] == "test")
    ].iloc[0]
    assert (row["normal"], row["anomaly"], row["unlabelled"], row["total"]) == (3, 3, 0, 6)
    assert index_main([str(tiny_data)]) == 0
    out = capsys.readouterr().out
    assert "108 clips" in out and "unlabelled" in out and "valve" in out


def test_cli_reads_root_from_config(tiny_data, repo, capsys):
    assert index_main(["--config", str(repo / "config.yml"), f"data.root={tiny_data}"]) == 0
    assert "108 clips" in capsys.readouterr().out
    assert index_main([str(tiny_data / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
