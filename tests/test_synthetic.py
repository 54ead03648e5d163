"""The synthetic data set: layout, names, ground truth, WAV format, determinism, difficulty."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from asd.infra.data import DataError, ground_truth_dir, index_dataset, parse_name, read_csvs
from asd.synthetic import FAULTS, MACHINES, MARKER, generate, main, plan, render

SMALL = dict(
    machines=("valve", "ToyCar"),
    dev_sections=("01",),
    eval_sections=("04",),
    n_source=2,
    n_target=1,
    n_test=2,
    duration=1.0,
)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_counts(tiny_data):
    df = index_dataset(tiny_data)
    counts = df.groupby(["dataset", "machine", "section", "domain", "split"]).size()
    for machine in ("fan", "valve"):
        for dataset, section in (("dev_data", "00"), ("eval_data", "03")):
            assert counts[(dataset, machine, section, "source", "train")] == 12
            assert counts[(dataset, machine, section, "target", "train")] == 3
            assert counts[(dataset, machine, section, "source", "test")] == 6
            assert counts[(dataset, machine, section, "target", "test")] == 6
    dev_test = df[(df["dataset"] == "dev_data") & (df["split"] == "test")]
    assert (
        dev_test.groupby(["machine", "domain"])["label"].apply(lambda s: (s == "anomaly").sum())
        == 3
    ).all()
    assert (df.loc[df["split"] == "train", "label"] == "normal").all()


def test_layout_folders(tiny_data):
    for dataset in ("dev_data", "eval_data"):
        for machine in ("fan", "valve"):
            folders = sorted(p.name for p in (tiny_data / dataset / machine).iterdir())
            assert folders == ["source_test", "target_test", "train"]
    assert (tiny_data / MARKER).is_file()
    assert not [p for p in tiny_data.rglob("*") if p.name.endswith(".tmp")]


def test_training_names_carry_attributes(tiny_data):
    df = index_dataset(tiny_data)
    train = df[df["split"] == "train"]
    assert (train["attributes"] != "").all()
    fan = train.loc[train["machine"] == "fan", "attributes"]
    assert fan.str.match(r"^strength_\d_(ambient|factory)$").all()
    assert train.loc[train["machine"] == "valve", "attributes"].str.match(r"^pat_\d\d$").all()
    assert (df.loc[df["split"] == "test", "attributes"] == "").all()  # 2021 test names


def test_eval_names_carry_no_labels(tiny_data):
    names = [p.name for p in (tiny_data / "eval_data").glob("*/*_test/*.wav")]
    assert len(names) == 24
    for name in names:
        assert "normal" not in name and "anomaly" not in name
        assert parse_name(name).label is None
    fan = sorted(p.name for p in (tiny_data / "eval_data" / "fan" / "source_test").iterdir())
    assert fan == [f"section_03_source_test_{i:04d}.wav" for i in range(6)]


def test_ground_truth_matches_eval_files(tiny_data):
    folder = ground_truth_dir(tiny_data)
    assert folder == tiny_data / "eval_data" / "ground_truth"
    expected = {
        f"ground_truth_{m}_section_03_{d}_test.csv"
        for m in ("fan", "valve")
        for d in ("source", "target")
    }
    assert {p.name for p in folder.iterdir()} == expected
    for machine in ("fan", "valve"):
        for domain in ("source", "target"):
            path = folder / f"ground_truth_{machine}_section_03_{domain}_test.csv"
            text = path.read_text()
            assert text.endswith("\n") and "\r" not in text and not text.startswith("file")
            rows = list(csv.reader(text.splitlines()))
            files = sorted(
                p.name for p in (tiny_data / "eval_data" / machine / f"{domain}_test").glob("*.wav")
            )
            assert [r[0] for r in rows] == files  # sorted, one row per clip
            assert sorted(r[1] for r in rows) == ["0", "0", "0", "1", "1", "1"]
    gt = read_csvs(ground_truth_dir(tiny_data), "ground_truth", "anomaly", [0, 1])
    assert len(gt) == 24 and set(gt["anomaly"]) == {0, 1}


def test_wav_format(tiny_data):
    for path in (
        list((tiny_data / "dev_data" / "fan" / "train").glob("*.wav"))[:3]
        + list((tiny_data / "eval_data" / "valve" / "target_test").glob("*.wav"))[:3]
    ):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
            "WAV",
            "PCM_16",
            16000,
            1,
            160000,
        )
        wave, _ = sf.read(path, dtype="float32")
        assert 0.003 < float(np.sqrt(np.mean(wave**2))) < 0.5
        assert np.abs(wave).max() < 1.0


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", **SMALL, seed=7)
    b = generate(tmp_path / "b", **SMALL, seed=7)
    c = generate(tmp_path / "c", **SMALL, seed=8)
    files = _files(a)
    assert files == _files(b) and len(files) == 2 * 2 * 7 + 4 + 1
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    wavs = [f for f in files if f.suffix == ".wav" and (c / f).exists()]
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in wavs)


@pytest.mark.slow
def test_workers_write_the_same_bytes(tmp_path):
    one = generate(tmp_path / "one", **SMALL, workers=1)
    two = generate(tmp_path / "two", **SMALL, workers=2)
    assert _files(one) == _files(two)
    for f in _files(one):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_clips_do_not_depend_on_the_set_size():
    small = plan(machines=("fan",), dev_sections=("00",), eval_sections=(), n_source=2, n_test=2)
    big = plan(
        machines=("fan", "pump"), dev_sections=("00",), eval_sections=(), n_source=5, n_test=4
    )
    first = small[0]
    twin = next(c for c in big if c.relpath == first.relpath)
    assert np.array_equal(render(first, 1.0), render(twin, 1.0))


def test_rerun_is_a_no_op_and_other_settings_replace(tmp_path):
    root = generate(tmp_path / "d", **SMALL)
    wav = next(root.rglob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    generate(root, **SMALL)
    assert wav.stat().st_mtime_ns == stamp
    generate(root, **{**SMALL, "machines": ("valve",)})
    assert not (root / "dev_data" / "ToyCar").exists()
    assert len(index_dataset(root)) == 2 * 7


def test_refuses_a_foreign_data_set(tmp_path):
    (tmp_path / "dev_data" / "fan" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="did not write"):
        generate(tmp_path, **SMALL)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"machines": ("fan", "drill")}, "unknown machine type 'drill'"),
        ({"dev_sections": ("0",)}, "section '0'"),
        ({"dev_sections": ("03",), "eval_sections": ("03",)}, "both development and evaluation"),
        ({"n_source": 0}, "n_source >= 1"),
    ],
)
def test_bad_settings(tmp_path, bad, words):
    with pytest.raises(ValueError, match=words):
        generate(tmp_path, **{**SMALL, **bad})


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    assert (
        main(
            [
                str(root),
                "--machines",
                "pump",
                "--sections-dev",
                "02",
                "--sections-eval",
                "",
                "--n-source",
                "2",
                "--n-target",
                "1",
                "--n-test",
                "2",
                "--duration",
                "1",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root)
    df = index_dataset(root)
    assert set(df["machine"]) == {"pump"} and set(df["section"]) == {"02"} and len(df) == 7
    assert not (root / "eval_data").exists()


def test_like_dcase2021_plans_the_real_counts():
    """The real data set's clips per section and split (docs/reproduction.md "Scale")."""
    from asd.synthetic.counts import REAL_GEARBOX_EVAL_TEST, REAL_GEARBOX_TRAIN

    clips = plan(like_dcase2021=True)
    assert len(clips) == 59276
    count = Counter(
        (c.dataset, c.machine, c.section, c.domain, "/train/" in c.relpath, c.anomaly)
        for c in clips
    )
    for machine in MACHINES:
        for dataset, sections in (
            ("dev_data", ("00", "01", "02")),
            ("eval_data", ("03", "04", "05")),
        ):
            for s in sections:
                train = REAL_GEARBOX_TRAIN[s] if machine == "gearbox" else 1000
                assert count[(dataset, machine, s, "source", True, False)] == train
                assert count[(dataset, machine, s, "target", True, False)] == 3
                tests = (200, 200)
                if machine == "gearbox" and dataset == "eval_data":
                    tests = REAL_GEARBOX_EVAL_TEST[s]
                for domain, n in zip(("source", "target"), tests):
                    assert count[(dataset, machine, s, domain, False, True)] == n // 2
                    assert count[(dataset, machine, s, domain, False, False)] == n - n // 2
    assert {c.dataset for c in clips if c.machine == "gearbox" and c.section == "04"} == {
        "eval_data"
    }
    assert (
        plan(like_dcase2021=True, machines=("fan",), fraction=0.1)[0]
        == clips[next(i for i, c in enumerate(clips) if c.machine == "fan")]
    )  # a fraction is a prefix


def test_like_dcase2021_writes_a_fraction(tmp_path, capsys):
    root = tmp_path / "full"
    assert (
        main(
            [
                str(root),
                "--like-dcase2021",
                "--fraction",
                "0.004",
                "--machines",
                "gearbox",
                "--duration",
                "0.5",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    df = index_dataset(root)
    counts = df.groupby(["dataset", "section", "domain", "split"]).size()
    assert counts[("dev_data", "01", "source", "train")] == 4  # round(1008 * 0.004)
    assert counts[("eval_data", "04", "source", "train")] == 4  # round(1092 * 0.004)
    assert (counts.xs("target", level="domain").xs("train", level="split") == 3).all()
    assert (counts.xs("test", level="split") == 2).all()  # at least one normal, one anomalous
    assert len(read_csvs(ground_truth_dir(root), "ground_truth", "anomaly", [0, 1])) == 12
    from bench.faults import clip_faults  # plans the set again from its marker

    assert len(clip_faults(root)) == len(df)
    assert main([str(tmp_path / "x"), "--fraction", "0.5"]) == 2
    assert "--like-dcase2021" in capsys.readouterr().err


def test_every_machine_and_fault_renders():
    clips = plan(
        machines=MACHINES, dev_sections=("00",), eval_sections=(), n_source=1, n_target=1, n_test=0
    )
    for clip in clips:
        for fault in FAULTS[clip.machine]:
            wave = render(
                clip.__class__(
                    **{**clip.__dict__, "fault": fault, "severity": 1.0, "anomaly": True}
                ),
                0.5,
            )
            assert wave.dtype == np.int16 and wave.shape == (8000,)
            assert np.abs(wave).max() > 100


def _mean_log_mel(path):
    import librosa

    wave, sr = sf.read(path, dtype="float32")
    mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=1024, hop_length=512, n_mels=128)
    return librosa.power_to_db(mel, amin=1e-10, top_db=None).mean(axis=1)  # (128,)


@pytest.mark.slow
def test_trivial_detector_is_far_from_perfect(tmp_path):
    """A Gaussian on each clip's mean log-mel vector must not solve the task, nor be blind.

    Also: the target domain is shifted away from the source, and a linear classifier on the
    mean log-mel tells the machine types apart and most sections of a type, which are variants
    of one kind of machine (asd.synthetic.SECTION_SPREAD), as in the real data.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.metrics import roc_auc_score

    root = generate(
        tmp_path / "set",
        machines=MACHINES,
        dev_sections=("00", "01"),
        eval_sections=(),
        n_source=16,
        n_target=3,
        n_test=12,
        seed=3,
        workers=min(2, os.cpu_count() or 1),
    )
    df = index_dataset(root)
    v = np.stack([_mean_log_mel(p) for p in df["path"]])
    aucs, shift = [], []
    for _, g in df.groupby(["machine", "section"]):
        train, test = g[g["split"] == "train"], g[g["split"] == "test"]
        gauss = LedoitWolf().fit(v[train[train["domain"] == "source"].index])
        score = gauss.mahalanobis(v[test.index])
        for domain in ("source", "target"):
            mask = (test["domain"] == domain).to_numpy()
            aucs.append(roc_auc_score(test["label"][mask] == "anomaly", score[mask]))
        normal = (test["label"] == "normal").to_numpy()
        shift.append(np.median(score[normal & ~mask]) < np.median(score[normal & mask]))
    assert 0.55 < np.mean(aucs) < 0.85, aucs
    assert sum(a > 0.97 for a in aucs) <= len(aucs) // 4, aucs
    assert np.mean(shift) >= 0.75  # target normals lie further from the source model

    # a linear classifier on the source training clips names the machine and section of normals
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = df[(df["split"] == "train") & (df["domain"] == "source")]
    test = df[(df["split"] == "test") & (df["domain"] == "source") & (df["label"] == "normal")]
    scale = StandardScaler().fit(v[train.index])
    classify = LogisticRegression(max_iter=2000).fit(
        scale.transform(v[train.index]), train["machine"] + "/" + train["section"]
    )
    guess = classify.predict(scale.transform(v[test.index]))
    truth = (test["machine"] + "/" + test["section"]).to_numpy()
    assert np.mean([g.split("/")[0] == t.split("/")[0] for g, t in zip(guess, truth)]) > 0.95
    assert np.mean(guess == truth) > 0.7  # sections: different, but not trivially so


def test_factory_events_rate_and_levels():
    """Every clip hears the factory: AMBIENCE_RATE events per second on average, each at a level
    within AMBIENCE_DB of the machine (unit RMS before the clip's gain)."""
    from asd.synthetic import SAMPLE_RATE
    from asd.synthetic.sources import AMBIENCE_DB, AMBIENCE_RATE, _ambience, _ambience_events

    n = 10 * SAMPLE_RATE
    counts, levels = [], []
    for seed in range(200):
        events = _ambience_events(n, np.random.default_rng(seed))
        counts.append(len(events))
        levels += [20 * np.log10(np.sqrt(np.mean(e.astype(np.float64) ** 2))) for _, e in events]
        for start, e in events:
            assert 0 <= start < n and start + len(e) <= n
    assert abs(np.mean(counts) - AMBIENCE_RATE * 10) < 0.4
    assert AMBIENCE_DB[0] - 0.01 <= min(levels) and max(levels) <= AMBIENCE_DB[1] + 0.01
    one = _ambience(n, np.random.default_rng(7))
    assert one.shape == (n,) and np.array_equal(one, _ambience(n, np.random.default_rng(7)))


def test_full_disk_is_one_line(tmp_path):
    """A write that fails (here: a file size limit) names the file on one line, exit status 2."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # a clip needs 320 kB

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "asd.synthetic",
            str(tmp_path / "d"),
            "--machines",
            "fan",
            "--sections-eval",
            "",
            "--n-source",
            "1",
            "--n-test",
            "2",
            "--workers",
            "1",
        ],
        preexec_fn=limit,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m asd.synthetic: error: ") and ".wav: could not write" in last
    marker = json.loads((tmp_path / "d" / MARKER).read_text())
    assert marker["complete"] is False  # never taken for a finished set
