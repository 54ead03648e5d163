"""bench.optim: the three optimisers on real training gradients, AdamP projecting its weights."""

import re

from bench import optim


def test_the_benchmark_times_all_three_on_gradients_adamp_projects(capsys):
    assert optim.main(["--rounds", "1", "--steps", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # training's gradients: every weight before batch norm is projected, as in training
    assert "AdamP projects 22 of its 22 weights" in out[0]
    rows = {line[:22].strip(): line.split()[-3:] for line in out[2:]}
    assert list(rows) == list(optim.OPTIMISERS)
    assert rows["adamp.AdamP"][1] == "1.00x"
    assert int(rows["MaskedAdamP (ours)"][2]) <= 400 < int(rows["adamp.AdamP"][2])
    assert all(re.fullmatch(r"\d+\.\d\d", ms) for ms, _, _ in rows.values())
