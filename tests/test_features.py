"""Log-mel features against librosa, audio loading edge cases, the `make cache` command."""

from __future__ import annotations

import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from asd.infra.config import load_config
from asd.method.features import AudioError, AudioWarning, load_audio, log_mel, log_mel_batch

SR = 16000


@pytest.fixture(scope="module")
def cfg(repo):
    return load_config(repo / "config.yml")


def librosa_log_mel(y, fc, top_db=None):
    """The reference: librosa's own defaults for everything the settings do not name."""
    S = librosa.feature.melspectrogram(
        y=y,
        sr=fc.sample_rate,
        n_fft=fc.n_fft,
        hop_length=fc.hop_length,
        n_mels=fc.n_mels,
        fmin=fc.fmin,
        fmax=fc.fmax,
        power=fc.power,
    )
    return librosa.power_to_db(S, ref=1.0, amin=fc.amin, top_db=top_db).T  # (T, M)


def signals(seconds=10.0):
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    hum = (
        0.3 * np.sin(2 * np.pi * 120 * t)
        + 0.2 * np.sin(2 * np.pi * 360 * t + 1)
        + 0.1 * np.sin(2 * np.pi * 1250 * t)
        + 0.01 * rng.standard_normal(n)
    )
    chirp = 0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * rng.standard_normal(n)
    return {
        "white": 0.1 * rng.standard_normal(n),
        "hum+noise": hum,
        "chirp+noise": chirp,
        "quiet": 1e-4 * rng.standard_normal(n),
        "bursts": 0.2 * rng.standard_normal(n) * (np.sin(2 * np.pi * 0.7 * t) > 0.5),
    }


def write(path: Path, y, sr=SR, subtype="PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------
# log_mel


@pytest.mark.parametrize("name", list(signals()))
def test_log_mel_matches_librosa(cfg, name):
    y = signals()[name].astype(np.float32)
    ours = log_mel(y, SR, cfg.features)
    assert ours.shape == (313, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, librosa_log_mel(y, cfg.features), rtol=0, atol=1e-3)


def test_log_mel_top_db_and_other_settings(cfg):
    y = signals()["chirp+noise"].astype(np.float32)
    fc = cfg.replace(**{"features.top_db": 80.0}).features
    np.testing.assert_allclose(log_mel(y, SR, fc), librosa_log_mel(y, fc, top_db=80.0), atol=1e-3)
    fc = cfg.replace(
        **{
            "features.n_mels": 64,
            "features.fmin": 50.0,
            "features.fmax": 7000.0,
            "features.n_fft": 2048,
            "features.hop_length": 256,
            "features.frames": 626,
        }
    ).features
    ours = log_mel(y, SR, fc)
    assert ours.shape == (626, 64)
    np.testing.assert_allclose(ours, librosa_log_mel(y, fc)[:626], atol=1e-3)


def test_log_mel_power_one(cfg):
    y = signals()["white"].astype(np.float32)
    fc = cfg.replace(**{"features.power": 1.0}).features
    np.testing.assert_allclose(log_mel(y, SR, fc), librosa_log_mel(y, fc), atol=1e-3)


def test_length_is_fitted_like_a_zero_padded_clip(cfg):
    fc = cfg.features
    y = signals(12.0)["hum+noise"].astype(np.float32)
    long = log_mel(y, SR, fc)  # 12 s: librosa gives 376 frames, we keep the first 313
    assert long.shape == (313, 128)
    np.testing.assert_allclose(long, librosa_log_mel(y, fc)[:313], atol=1e-3)
    short = y[: 5 * SR]
    padded = np.pad(short, (0, 10 * SR - len(short)))
    np.testing.assert_allclose(log_mel(short, SR, fc), librosa_log_mel(padded, fc), atol=1e-3)
    # every length from 159744 to 160255 samples is "313 frames" for librosa: unchanged here
    for n in (159744, 160000, 160255):
        np.testing.assert_allclose(log_mel(y[:n], SR, fc), librosa_log_mel(y[:n], fc), atol=1e-3)
    silence = log_mel(np.zeros(3 * SR, np.float32), SR, fc)
    assert silence.shape == (313, 128) and np.all(silence == -100.0)  # 10 log10(amin)


def test_log_mel_resamples_other_rates(cfg):
    y = signals()["hum+noise"].astype(np.float32)
    y22 = librosa.resample(y, orig_sr=SR, target_sr=22050)
    ours = log_mel(y22, 22050, cfg.features)
    assert ours.shape == (313, 128)
    ref = librosa_log_mel(y, cfg.features)
    assert np.median(np.abs(ours - ref)) < 0.5  # resampled twice: close, not identical


def test_log_mel_rejects_bad_waveforms(cfg):
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, SR), np.float32), SR, cfg.features)
    with pytest.raises(ValueError, match="NaN"):
        log_mel(np.full(SR, np.nan, np.float32), SR, cfg.features)


@pytest.mark.parametrize("overrides", [{}, {"features.power": 1.0, "features.top_db": 80.0}])
@pytest.mark.parametrize("samples", [150000, 170000])
def test_a_batch_equals_its_clips_one_by_one(cfg, overrides, samples):
    fc = cfg.replace(**overrides).features
    sig = signals(11.0)
    batch = np.stack([sig[k] for k in sig]).astype(np.float32)[:, :samples]  # (5, samples)
    with torch.no_grad():
        out = log_mel_batch(torch.from_numpy(batch), fc)
    assert out.shape == (5, 313, 128) and out.dtype == torch.float32
    for i, y in enumerate(batch):
        np.testing.assert_allclose(out[i].numpy(), log_mel(y, SR, fc), atol=1e-4)
    devices = ["cuda"] if torch.cuda.is_available() else []
    for device in devices:  # the same numbers on an accelerator
        with torch.no_grad():
            there = log_mel_batch(torch.from_numpy(batch).to(device), fc).cpu()
        np.testing.assert_allclose(there.numpy(), out.numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# load_audio


@pytest.mark.parametrize(
    "subtype,tol",
    [
        ("PCM_16", 1e-4),
        ("PCM_24", 1e-6),
        ("PCM_32", 1e-6),
        ("PCM_U8", 1e-2),
        ("FLOAT", 0),
        ("DOUBLE", 0),
    ],
)
def test_load_audio_reads_common_wav_formats(tmp_path, cfg, subtype, tol):
    y = (0.1 * np.random.default_rng(1).standard_normal(10 * SR)).clip(-0.99, 0.99)
    path = write(tmp_path / f"clip_{subtype}.wav", y, subtype=subtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 10 s mono 16 kHz clip warns about nothing
        wave = load_audio(path, cfg.features)
    assert wave.dtype == np.float32 and wave.shape == (10 * SR,)
    np.testing.assert_allclose(wave, y, atol=tol)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pcm16_reads_as_libsndfile_float32(tmp_path, cfg, channels):
    rng = np.random.default_rng(channels)
    y = (0.3 * rng.standard_normal((10 * SR, channels))).clip(-1, 1)
    path = write(tmp_path / "pcm16.wav", y, subtype="PCM_16")
    ref = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if channels > 1 else "error")
        np.testing.assert_array_equal(load_audio(path, cfg.features, "mean"), ref)
    # a chunk before the data (as some recorders write) and an odd-sized one: still exact
    raw = path.read_bytes()
    fmt_end = raw.index(b"data")
    extra = b"LIST" + (5).to_bytes(4, "little") + b"hello" + b"\0"
    patched = raw[:fmt_end] + extra + raw[fmt_end:]
    patched = patched[:4] + (len(patched) - 8).to_bytes(4, "little") + patched[8:]
    other = tmp_path / "with_list.wav"
    other.write_bytes(patched)
    assert sf.info(other).frames == 10 * SR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(load_audio(other, cfg.features, "mean"), ref)


def test_load_audio_averages_channels(tmp_path, cfg):
    rng = np.random.default_rng(2)
    y = (0.1 * rng.standard_normal((10 * SR, 2))).astype(np.float32)
    path = write(tmp_path / "stereo.wav", y, subtype="FLOAT")
    with pytest.warns(AudioWarning, match=r"stereo\.wav: 2 channels, averaged to mono"):
        wave = load_audio(path, cfg.features, "mean")  # data.channel: mean
    np.testing.assert_allclose(wave, y.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_load_audio_resamples(tmp_path, cfg, rate):
    t = np.arange(10 * rate) / rate
    y = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = write(tmp_path / f"rate{rate}.wav", y, sr=rate, subtype="FLOAT")
    with pytest.warns(AudioWarning, match=rf"rate{rate}\.wav: sample rate {rate} Hz, resampled"):
        wave = load_audio(path, cfg.features)
    assert abs(len(wave) - 10 * SR) <= 1
    assert abs(np.sqrt(np.mean(wave[SR:-SR] ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # tone kept
    assert log_mel(wave, SR, cfg.features).shape == (313, 128)


@pytest.mark.parametrize("seconds,how", [(12.0, "cropped"), (4.0, "zero-padded")])
def test_load_audio_warns_about_length(tmp_path, cfg, seconds, how):
    path = write(
        tmp_path / "odd.wav", 0.01 * np.random.default_rng(4).standard_normal(int(seconds * SR))
    )
    with pytest.warns(AudioWarning, match=rf"odd\.wav: .* {how} to 313"):
        wave = load_audio(path, cfg.features)
    assert len(wave) == int(seconds * SR)  # load_audio keeps it; log_mel fits it
    assert log_mel(wave, SR, cfg.features).shape == (313, 128)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write(tmp_path / "good.wav", 0.1 * np.ones(SR)).read_bytes()
    cases = {}

    def put(name, data, match):
        p = tmp_path / name
        p.write_bytes(data)
        cases[name] = (p, match)

    put("zero_bytes.wav", b"", "not a readable audio file")
    put("text.wav", b"this is not audio\n" * 20, "not a readable audio file")
    put("no_data_chunk.wav", good[:30], "not a readable audio file")
    put("header_only.wav", good[:44], "truncated WAV file")
    put("truncated.wav", good[: len(good) // 2], "truncated WAV file")
    cases["empty.wav"] = (write(tmp_path / "empty.wav", np.zeros(0)), "empty audio file")
    nan = np.zeros(SR, np.float32)
    nan[100] = np.nan
    cases["nan.wav"] = (write(tmp_path / "nan.wav", nan, subtype="FLOAT"), "NaN or infinite")
    inf = np.zeros(SR, np.float32)
    inf[5] = np.inf
    cases["inf.wav"] = (write(tmp_path / "inf.wav", inf, subtype="FLOAT"), "NaN or infinite")
    cases["missing.wav"] = (tmp_path / "missing.wav", "does not exist")
    return cases


def test_load_audio_errors_name_the_file_and_problem(tmp_path, cfg):
    for name, (path, match) in _bad_files(tmp_path).items():
        with pytest.raises(AudioError, match=match) as info:
            load_audio(path, cfg.features)
        assert str(path) in str(info.value), name
        assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------
# real recordings


def test_real_recordings_flow_through(real_audio, cfg):
    files = sorted(real_audio.rglob("*.wav"))
    assert len(files) >= 20
    long = 0
    compare = {next(f.name for f in files if f.parent.parent.name == m) for m in ("ToyCar", "fan")}
    for f in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wave = load_audio(f, cfg.features)
        feats = log_mel(wave, SR, cfg.features)
        assert feats.shape == (313, 128) and np.isfinite(feats).all()
        if len(wave) > 160255:  # the 12 s ToyCar / ToyTrain clips
            long += 1
            assert any(
                "cropped to 313" in str(w.message) and f.name in str(w.message) for w in caught
            )
        else:
            assert not caught
        if f.name in compare:  # a 12 s and a 10 s clip against librosa
            np.testing.assert_allclose(feats, librosa_log_mel(wave, cfg.features)[:313], atol=1e-3)
    assert long >= 4
