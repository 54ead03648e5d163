"""The data layouts of issue 21 (asd.infra.data): 2021, 2022, 2023-2026 and plain folders told
apart and read, attribute classes, Step 2's source x target rows, bad input in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asd.infra.data import (
    DataError,
    class_mode,
    class_table,
    detect_layout,
    index_dataset,
    parse_name,
    with_ground_truth,
)
from asd.method.sampling import check_clips, training_rows
from asd.synthetic import generate

TINY = dict(machines=("fan", "valve"), n_source=3, n_target=2, n_test=2, duration=0.5)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """One tiny generated data set per layout (two machine types, 0.5 s clips)."""
    roots = {}
    for layout in ("dcase2021", "dcase2022", "dcase2023", "folders"):
        sections = (
            dict(dev_sections=("00",), eval_sections=("03",)) if layout == "dcase2021" else {}
        )
        roots[layout] = generate(tmp_path_factory.mktemp(layout), layout=layout, **sections, **TINY)
    return roots


def touch(root: Path, *names: str) -> Path:
    """Empty files (the index reads names only)."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


@pytest.mark.parametrize("layout", ["dcase2021", "dcase2022", "dcase2023", "folders"])
def test_auto_tells_each_generated_layout(generated, layout, caplog):
    with caplog.at_level(logging.INFO, logger="asd.infra.data"):
        assert detect_layout(generated[layout]).name == layout
    assert f"{layout} layout" in caplog.text  # says which it chose
    index = index_dataset(generated[layout])
    assert (index["split"] == "train").any() and (index["split"] == "test").any()
    assert index["label"][index["split"] == "train"].eq("normal").all()


def test_2022_and_2023_eval_test_clips_carry_no_domain_until_the_ground_truth(generated):
    for layout, sections in (("dcase2022", {"03", "04", "05"}), ("dcase2023", {"00"})):
        root = generated[layout]
        index = index_dataset(root)
        test = index[(index["dataset"] == "eval_data") & (index["split"] == "test")]
        assert set(test["section"]) == sections
        assert test["domain"].isna().all() and test["label"].isna().all()
        assert test["file"].str.fullmatch(r"section_\d{2}_\d{4}\.wav").all()
        filled = with_ground_truth(index, root).loc[test.index]
        assert filled["domain"].notna().all() and filled["label"].notna().all()
        per_domain = filled.groupby(["machine", "section", "domain"])["label"].value_counts()
        assert (per_domain == 1).all()  # TINY: 2 per domain, one of each label


def test_2023_classes_are_attribute_combinations_with_a_domain_column(generated):
    index = index_dataset(generated["dcase2023"])
    assert class_mode("auto", detect_layout(generated["dcase2023"])) == "attributes"
    table = class_table(index, "attributes")
    assert list(table.columns) == ["class", "machine", "section", "domain", "attributes"]
    train = index[index["split"] == "train"]
    assert len(table) == len(set(zip(train["machine"], train["domain"], train["attributes"])))
    labels, rows = training_rows(index, table)
    assert len(rows["source"]) == 2 * 3 * 2 and len(rows["target"]) == 2 * 2 * 2  # dev + eval
    assert (labels[rows["target"]] >= 0).all()
    assert set(table.loc[labels[rows["target"]], "domain"]) == {"target"}
    check_clips(rows, ["source", "target"], table, "root", "stage2")  # Step 2 can pair them
    assert len(class_table(index, "section")) == 4 * 2  # (fan, valve, fanEval, valveEval) x domain


def test_hidden_attributes_are_one_class_per_domain(tmp_path):
    names = [
        f"m/train/section_00_{d}_train_normal_000{i}_noAttribute.wav"
        for d in ("source", "target")
        for i in range(3)
    ]
    root = touch(tmp_path, *names, "m/test/section_00_source_test_normal_0000_noAttribute.wav")
    index = index_dataset(root)
    table = class_table(index, "attributes")
    assert table[["domain", "attributes"]].values.tolist() == [["source", ""], ["target", ""]]


def test_an_empty_attribute_part_reads_as_none():
    clip = parse_name("section_00_source_train_normal_0000_.wav", "dcase2023")
    assert clip.attributes == "" and clip.index == 0 and clip.domain == "source"
    assert parse_name("section_00_0007.wav", "dcase2023").domain is None
    with pytest.raises(DataError, match="section_00_0007.wav: not a DCASE clip name"):
        parse_name("section_00_0007.wav")  # 2021 names always say the domain


def test_real_2023_recordings_read_as_the_2023_layout(real_audio):
    layout = detect_layout(real_audio)
    assert layout.name == "dcase2023" and layout.classes == "attributes"
    index = index_dataset(real_audio, layout)
    assert len(index) == 28 and index["domain"].notna().all()
    slider = index[(index["machine"] == "slider") & (index["split"] == "test")]
    assert "vel_730_ac_0.11" in set(slider["attributes"])
    assert len(class_table(index, "attributes")) == 12  # the 14 training clips' combinations


def test_folders_conditions_are_classes_and_the_smallest_plays_the_target(generated):
    index = index_dataset(generated["folders"])
    assert set(index["dataset"]) == {"folders"} and set(index["section"]) == {"00"}
    train = index[index["split"] == "train"]
    assert set(zip(train["attributes"], train["domain"])) == {
        ("usual", "source"),
        ("changed", "target"),
    }
    test = index[index["split"] == "test"]
    assert test["domain"].isna().all() and set(test["label"]) == {"normal", "anomaly"}
    assert test["file"].str.match(r"(normal|anomaly)/rec_\d{4}\.wav").all()
    table = class_table(index, class_mode("auto", "folders"))
    assert len(table) == 4  # two machines x two conditions
    _, rows = training_rows(index, table)
    check_clips(rows, ["source", "target"], table, "root", "stage2")


def test_folders_of_one_condition_say_step2_cannot_pair_and_one_class_is_named(tmp_path, caplog):
    from asd.infra.config import ConfigError
    from asd.infra.data import warn_single_class

    root = touch(tmp_path, "pump/train/a.wav", "pump/train/b.wav", "pump/test/normal/c.wav")
    index = index_dataset(root)
    table = class_table(index, "attributes")
    with caplog.at_level(logging.WARNING, logger="asd.infra.data"):
        warn_single_class(table, root)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "ONE class" in line and "sub-folders" in line and "\n" not in line
    _, rows = training_rows(index, table)
    with pytest.raises(ConfigError, match="no target training clips.*submit works from the Step 1"):
        check_clips(rows, ["source", "target"], table, str(root), "stage2")


def test_a_folder_matching_no_layout_is_one_line_naming_it(tmp_path):
    touch(tmp_path, "notes/readme.txt", "pump/recordings/a.wav")
    with pytest.raises(DataError) as err:
        detect_layout(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: matches no data layout") and "\n" not in str(
        err.value
    )


def test_a_broken_name_in_one_file_is_one_line_naming_it(generated, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(generated["dcase2023"], root)
    bad = root / "dev_data" / "fan" / "train" / "section_00_source_trian_normal_0099_x.wav"
    bad.write_bytes(b"")
    with pytest.raises(DataError) as err:
        index_dataset(root)
    assert str(err.value).startswith(f"{bad.absolute()}: not a DCASE clip name")
    assert "\n" not in str(err.value)


def test_an_eval_clip_without_ground_truth_is_one_line_naming_it(generated, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(generated["dcase2023"], root)
    extra = root / "eval_data" / "fanEval" / "test" / "section_00_0099.wav"
    shutil.copy(next(extra.parent.glob("*.wav")), extra)
    with pytest.raises(DataError) as err:
        with_ground_truth(index_dataset(root), root)
    assert str(err.value).startswith(f"{extra.absolute()}: an evaluation test clip")
    assert "\n" not in str(err.value)


def test_2021_and_2022_folders_in_one_root_are_refused(tmp_path):
    touch(
        tmp_path,
        "dev_data/fan/train/section_00_source_train_normal_0000.wav",
        "dev_data/fan/source_test/section_00_source_test_normal_0000.wav",
        "dev_data/pump/train/section_00_source_train_normal_0000.wav",
        "dev_data/pump/test/section_00_source_test_normal_0000.wav",
    )
    with pytest.raises(DataError, match="mixes the 2021 layout"):
        detect_layout(tmp_path)


def test_folders_with_clips_and_sub_folders_in_train_are_refused(tmp_path):
    touch(tmp_path, "pump/train/a.wav", "pump/train/fast/b.wav")
    with pytest.raises(DataError, match="holds both .wav files and sub-folders"):
        index_dataset(tmp_path)
    touch(tmp_path, "fan/train/a.wav", "fan/test/loose.wav")
    (tmp_path / "pump" / "train" / "a.wav").unlink()
    with pytest.raises(DataError, match="test: expected only the sub-folders normal/ and anomaly/"):
        index_dataset(tmp_path)


def test_a_configured_layout_is_taken_as_it_is(generated):
    assert detect_layout(generated["dcase2023"], "dcase2022").name == "dcase2022"
    with pytest.raises(DataError, match="data layout 'dcase2019'"):
        detect_layout(generated["dcase2023"], "dcase2019")


def test_two_channel_files_give_the_chosen_channel(tmp_path):
    from asd.infra.config import load_config
    from asd.infra.feature_cache import cache_folder
    from asd.method.features import AudioError, read_audio

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yml")
    root = generate(
        tmp_path / "two",
        layout="folders",
        channels=2,
        machines=("fan",),
        n_source=1,
        n_target=0,
        n_test=0,
        duration=0.5,
    )
    path = next(root.rglob("*.wav"))
    stereo, rate = sf.read(path, dtype="float32", always_2d=True)
    assert stereo.shape[1] == 2 and rate == 16000
    near, _ = read_audio(path, cfg.features)  # data.channel 0: the near microphone
    far, _ = read_audio(path, cfg.features, 1)
    mean, _ = read_audio(path, cfg.features, "mean")
    np.testing.assert_array_equal(near, stereo[:, 0])
    np.testing.assert_array_equal(far, stereo[:, 1])
    np.testing.assert_allclose(mean, stereo.mean(axis=1), atol=1e-7)
    assert np.abs(near).max() > 2 * np.abs(far).max()  # the far one is quieter
    with pytest.raises(AudioError, match="has 2 channels, so data.channel 2 does not exist"):
        read_audio(path, cfg.features, 2)
    other = cfg.replace(**{"data.channel": "mean"})
    assert cache_folder(cfg, root) != cache_folder(other, root)  # the cache key holds it


def test_the_generator_refuses_a_root_with_foreign_machine_folders(tmp_path):
    touch(tmp_path, "fan/train/mine.wav")
    with pytest.raises(DataError, match="that asd.synthetic did not write"):
        generate(tmp_path, layout="folders", **TINY)
    assert (tmp_path / "fan" / "train" / "mine.wav").is_file()


def test_the_index_counts_unknown_domains(generated):
    from asd.index import counts_table

    table = counts_table(index_dataset(generated["dcase2023"]))
    unknown = table[table["domain"] == "unknown"]
    assert len(unknown) == 2 and (unknown["unlabelled"] == 4).all()
    assert isinstance(table, pd.DataFrame)
