"""Argument checks every command shares: machine names with a "did you mean", sections as 0 or
00, a run folder that does not exist, help texts that name only what the command takes."""

import argparse

import pytest

from asd import download, index, score
from asd.infra.cli import names_argument, section_name, sections_argument, unknown_names
from asd.infra.config import ConfigError
from asd.infra.runs import Run
from asd.synthetic import command as synthetic
from asd.synthetic.designs import MACHINES


def test_unknown_names_suggest_the_nearest_known_one_case_aside():
    message = unknown_names(["fna", "toycar", "fan", "zzz"], MACHINES, "machine type")
    assert message.startswith("unknown machine type 'fna' (did you mean 'fan'?)")
    assert "'toycar' (did you mean 'ToyCar'?)" in message
    assert "'zzz'; known: fan, gearbox" in message  # no near name: no guess
    assert unknown_names(["fan", "valve"], MACHINES, "machine type") is None


def test_names_argument_splits_and_refuses():
    parse = names_argument(MACHINES)
    assert parse("fan,valve") == ("fan", "valve") and parse("fan valve") == ("fan", "valve")
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean 'gearbox'"):
        parse("fan,gearbx")


@pytest.mark.parametrize(
    ("text", "section"), [("0", "00"), ("00", "00"), ("3", "03"), ("12", "12")]
)
def test_sections_as_one_or_two_digits(text, section):
    assert section_name(text) == section


def test_a_section_that_is_not_a_number_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="'a1' is not a number"):
        section_name("a1")
    assert sections_argument("0,1, 2") == ("00", "01", "02") and sections_argument("") == ()


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (download.main, ["--machines", "fan,fna", "--list"]),
        (synthetic.main, ["--machines", "fna", "/nowhere"]),
        (score.main, ["RUN", "x.wav", "--section", "first"]),
    ],
)
def test_commands_refuse_bad_names_before_any_work(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "did you mean 'fan'" in err or "'first' is not a number" in err


def test_synthetic_reads_sections_as_one_or_two_digits():
    args = synthetic.build_parser().parse_args(["--sections-dev", "0,1", "--sections-eval", "3"])
    assert args.sections_dev == ("00", "01") and args.sections_eval == ("03",)


def test_a_missing_run_folder_is_reported_as_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"no such folder: .*nowhere$"):
        Run.open_finished(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is not a run folder"):
        Run.open_finished(tmp_path)


@pytest.mark.parametrize("main", [index.main, synthetic.main, download.main])
def test_help_names_no_run_folder_where_the_command_takes_none(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "run" not in capsys.readouterr().out.lower()


def test_index_without_data_says_where_to_get_it(tmp_path, capsys):
    assert index.main([str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "does not exist; make data downloads the real data" in err
    assert "make synth" in err or "make index CONFIG=configs/demo.yml" in err


def test_every_command_prints_a_warning_once_as_one_line(capsys):
    import warnings

    from asd.infra.cli import make_parser, run_command

    def main(args):
        for _ in range(3):
            warnings.warn("clip a: cropped", UserWarning, stacklevel=1)
        warnings.warn("clip b: cropped", UserWarning, stacklevel=1)

    assert run_command(main, make_parser("asd.x", "A command.", overrides=False), []) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: clip a: cropped", "warning: clip b: cropped"]
