"""The data index: every name pattern, the layouts, clear errors, stable class ids."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from asd.infra.data import (
    COLUMNS,
    ClipName,
    DataError,
    assign_classes,
    class_table,
    csv_name,
    ground_truth_dir,
    index_dataset,
    load_classes,
    parse_name,
    read_csvs,
    save_classes,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "section_00_source_train_normal_0000_strength_1_ambient.wav",
            ClipName("00", "source", "train", "normal", 0, "strength_1_ambient"),
        ),
        (
            "section_01_source_train_normal_0042_A1Spd28VMic1.wav",
            ClipName("01", "source", "train", "normal", 42, "A1Spd28VMic1"),
        ),
        (
            "section_02_target_train_normal_0001_0_g_25_mm_2000_mV_none.wav",
            ClipName("02", "target", "train", "normal", 1, "0_g_25_mm_2000_mV_none"),
        ),
        (
            "section_00_target_test_anomaly_0012.wav",
            ClipName("00", "target", "test", "anomaly", 12, ""),
        ),
        ("section_04_source_test_0199.wav", ClipName("04", "source", "test", None, 199, "")),
        (
            "section_00_target_test_anomaly_0015_car_A2_spd_6_mic_2.wav",
            ClipName("00", "target", "test", "anomaly", 15, "car_A2_spd_6_mic_2"),
        ),
        (
            "section_00_source_test_normal_0027_vel_730_ac_0.11.wav",
            ClipName("00", "source", "test", "normal", 27, "vel_730_ac_0.11"),
        ),
        (
            "section_00_source_test_0003_volt_1.5_wt_150.wav",
            ClipName("00", "source", "test", None, 3, "volt_1.5_wt_150"),
        ),
    ],
)
def test_parse_name(name, expected):
    assert parse_name(name) == expected
    assert parse_name(f"/some/folder/{name}") == expected


@pytest.mark.parametrize(
    "name, words",
    [
        ("normal_id_00_00000000.wav", "expected section_XX_"),
        ("section_00_middle_train_normal_0000.wav", "unknown domain 'middle'"),
        ("section_0_source_test_0001.wav", "expected section_XX_"),
        ("section_00_source_test_anomaly.wav", "expected section_XX_"),
        ("section_00_source_train_0001.wav", "train_normal"),
        ("section_00_source_test_normal_0001.flac", "expected section_XX_"),
    ],
)
def test_parse_name_errors_name_the_file(name, words):
    with pytest.raises(DataError) as err:
        parse_name(name)
    assert name in str(err.value) and words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_real_audio_folder(real_audio):
    df = index_dataset(real_audio)
    assert list(df.columns) == COLUMNS
    assert len(df) == 28 and set(df["dataset"]) == {""}
    assert set(df["machine"]) == {
        "ToyCar",
        "ToyTrain",
        "bearing",
        "fan",
        "gearbox",
        "slider",
        "valve",
    }
    assert (df["section"] == "00").all()
    assert set(df["split"]) == {"train", "test"} and set(df["label"]) == {"normal", "anomaly"}
    row = df[df["file"] == "section_00_source_test_normal_0027_vel_730_ac_0.11.wav"].iloc[0]
    assert (row["machine"], row["domain"], row["attributes"]) == (
        "slider",
        "source",
        "vel_730_ac_0.11",
    )
    # only source training clips exist there: target test clips belong to no class
    assert (df.loc[df["domain"] == "target", "class"] == -1).all()
    assert (df.loc[df["domain"] == "source", "class"] >= 0).all()


def test_index_of_tiny_data(tiny_data):
    df = index_dataset(tiny_data)
    assert list(df.columns) == COLUMNS
    assert len(df) == 108
    assert df["path"].map(lambda p: p.startswith("/")).all()
    keys = list(zip(df["dataset"], df["machine"], df["path"].str.split("/").str[-2], df["file"]))
    assert keys == sorted(keys)
    dev = df[df["dataset"] == "dev_data"]
    ev = df[df["dataset"] == "eval_data"]
    assert ev.loc[ev["split"] == "test", "label"].isna().all()
    assert ev.loc[ev["split"] == "test", "label"].map(lambda v: v is None).all()
    assert set(dev.loc[dev["split"] == "test", "label"]) == {"normal", "anomaly"}
    assert df["index"].dtype.kind == "i" and df["class"].dtype.kind == "i"
    classes = class_table(df)
    assert len(classes) == 2 * 2 * 2  # machines x sections x domains
    assert (df["class"] >= 0).all()


def test_class_ids_sorted_and_stable(tiny_data, tmp_path):
    df = index_dataset(tiny_data)
    table = class_table(df)
    assert list(table["class"]) == list(range(len(table)))
    keys = list(zip(table["machine"], table["section"], table["domain"]))
    assert keys == sorted(keys)
    path = tmp_path / "run" / "classes.csv"
    save_classes(table, path)
    loaded = load_classes(path)
    pd.testing.assert_frame_equal(loaded, table)
    assert loaded["section"].tolist()[0] == "00"  # two-digit strings, not ints
    assert not list(path.parent.glob(".*.tmp"))


def test_assign_classes_across_roots(tiny_data, tmp_path):
    """A second root holding only fan's eval section 03: ids follow the saved table."""
    other = tmp_path / "other"
    shutil.copytree(tiny_data / "eval_data" / "fan", other / "eval_data" / "fan")
    table = class_table(index_dataset(tiny_data))
    small = index_dataset(other)
    assert class_table(small)["class"].tolist() == [0, 1]  # its own ids start at 0
    mapped = assign_classes(small, table)
    for _, row in mapped.iterrows():
        want = table[
            (table["machine"] == row["machine"])
            & (table["section"] == row["section"])
            & (table["domain"] == row["domain"])
        ]["class"].item()
        assert row["class"] == want
    unknown = table[table["machine"] == "valve"].assign(machine="pump")
    assert (
        assign_classes(index_dataset(tiny_data).query("machine == 'valve'"), unknown)["class"] == -1
    ).all()


def test_load_classes_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_classes(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="bad.csv.*expected columns"):
        load_classes(bad)


def _machine_tree(
    root, machine="fan", train=("section_00_source_train_normal_0000_a_1.wav",), tests=()
):
    for name in train:
        (root / "dev_data" / machine / "train").mkdir(parents=True, exist_ok=True)
        (root / "dev_data" / machine / "train" / name).write_bytes(b"")
    for folder, name in tests:
        (root / "dev_data" / machine / folder).mkdir(parents=True, exist_ok=True)
        (root / "dev_data" / machine / folder / name).write_bytes(b"")


def test_dev_only_root_and_2023_layout(tmp_path):
    _machine_tree(
        tmp_path,
        tests=[
            ("test", "section_00_target_test_anomaly_0001_a_2.wav"),
            ("test", "section_00_source_test_normal_0001_a_1.wav"),
        ],
    )
    df = index_dataset(tmp_path)
    assert set(df["dataset"]) == {"dev_data"} and len(df) == 3
    assert df.loc[df["split"] == "test", "attributes"].tolist() == ["a_1", "a_2"]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        index_dataset(tmp_path / "nowhere")


def test_root_without_data(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match="expected dev_data/ or eval_data/"):
        index_dataset(tmp_path)


def test_machine_without_train(tmp_path):
    (tmp_path / "dev_data" / "fan" / "source_test").mkdir(parents=True)
    with pytest.raises(DataError, match=r"dev_data/fan: machine folder without a train/"):
        index_dataset(tmp_path)


def test_empty_train_folder(tmp_path):
    (tmp_path / "dev_data" / "fan" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"fan/train: no \.wav files"):
        index_dataset(tmp_path)


def test_test_name_in_train_folder(tmp_path):
    _machine_tree(tmp_path, train=("section_00_source_test_normal_0000.wav",))
    with pytest.raises(DataError, match=r"train/section_00_source_test_normal_0000.wav.*'test'"):
        index_dataset(tmp_path)


def test_target_name_in_source_test_folder(tmp_path):
    _machine_tree(tmp_path, tests=[("source_test", "section_00_target_test_normal_0000.wav")])
    with pytest.raises(DataError, match=r"source_test/section_00_target.*expected only source"):
        index_dataset(tmp_path)


def test_malformed_name_names_its_path(tmp_path):
    _machine_tree(tmp_path, tests=[("source_test", "recording_7.wav")])
    with pytest.raises(DataError, match=r"source_test/recording_7.wav: not a DCASE clip name"):
        index_dataset(tmp_path)


def test_ground_truth_folder_is_not_a_machine(tiny_data):
    df = index_dataset(tiny_data)
    assert "ground_truth" not in set(df["machine"])
    gt = read_csvs(ground_truth_dir(tiny_data), "ground_truth", "anomaly", [0, 1])
    assert list(gt.columns) == ["machine", "section", "domain", "file", "anomaly"]


def test_csv_names():
    assert csv_name("anomaly_score", "ToyCar", "03", "target") == (
        "anomaly_score_ToyCar_section_03_target_test.csv"
    )
