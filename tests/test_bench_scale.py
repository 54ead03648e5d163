"""bench.scale: its subsampled data roots, refusals, and (slow) a whole run on the tiny data set."""

import re

import pytest
from helpers import TINY

from asd.infra.data import ground_truth_dir, index_dataset, with_ground_truth
from bench import scale


def test_subsample_links_a_share_of_every_group(tiny_data, tmp_path):
    assert scale.subsample(tiny_data, tmp_path / "half", 1.0) == tiny_data
    half = scale.subsample(tiny_data, tmp_path / "half", 0.5)
    full, part = (with_ground_truth(index_dataset(r), r) for r in (tiny_data, half))
    keys = ["dataset", "machine", "section", "domain", "split", "label"]
    n_full, n_part = (d.groupby(keys, dropna=False).size() for d in (full, part))
    # 12 source training clips -> 6; 3 target training clips and 3 test clips per label: whole
    assert n_part.to_dict() == {k: (v if v <= 3 else round(v / 2)) for k, v in n_full.items()}
    assert all(p.is_symlink() for p in (half / "dev_data" / "fan" / "train").iterdir())
    assert ground_truth_dir(half).resolve() == ground_truth_dir(tiny_data).resolve()
    mtime = (half / "subsample.json").stat().st_mtime_ns
    assert scale.subsample(tiny_data, half, 0.5) == half  # reused, not rewritten
    assert (half / "subsample.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fractions", "0,1"], "--fractions 0,1: expected numbers in (0, 1]"),
        (["--fractions", "0.5,2"], "expected numbers in (0, 1]"),
        (["--iterations", "0"], "--iterations 0: expected at least 1"),
    ],
)
def test_refuses_bad_arguments_in_one_line(args, message, tmp_path, capsys):
    assert scale.main(args + ["--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_growth_table_and_plot_of_two_fractions(tmp_path):
    """The report of two fractions: each phase's growth of time, RSS and own memory."""
    mib = scale.MIB

    def phase(fraction, name, factor):
        samples = [(0.0, 100 * factor * mib, 60 * factor * mib)]
        marks = [10.0 * factor, 20.0 * factor, 30.0 * factor]
        return scale.Phase(fraction, int(100 * fraction), name, 4.0 * factor, samples, marks)

    phases = [phase(f, name, f * 2) for f in (0.5, 1) for name in scale.PHASES]
    lines = scale.report(phases, iterations=6)
    assert lines[1] == "growth 0.5 -> 1 (2.0x the clips):"
    for name in scale.PHASES:  # every phase took twice the time and memory at twice the clips
        assert f"{name:9s}   2.00x   2.00x   2.00x" in lines
    assert (
        lines[-2]
        == "Step 1 at 1, own memory (MiB) after 0, 1/2, ... of its 6 iterations: 20 / 40 / 60"
    )
    assert scale.plot(phases, tmp_path / "scale.png").stat().st_size > 0


@pytest.mark.slow
def test_whole_bench_on_the_tiny_data_set(tiny_data, tmp_path, capsys, repo, monkeypatch):
    """Every phase of one fraction, each in its own process (two fractions: the test above)."""
    monkeypatch.chdir(repo)
    args = ["--root", str(tiny_data), "--work", str(tmp_path), "--fractions", "1"]
    assert scale.main([*args, "--iterations", "2", *TINY]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"full-scale submit: \d+ s", out[-1])
    assert sum(1 for line in out if re.match(r"\s+1\s+\d+\s+\w+", line)) == len(scale.PHASES)
    assert any(line.startswith("Step 1 at 1, own memory") for line in out)
    assert (tmp_path / "scale.png").stat().st_size > 0
    assert not (tmp_path / "cache").exists()  # removed after each fraction
