"""Log-mel features (report 2.1): reading a clip and its log-mel spectrogram.

Periodic Hann STFT centred with zero padding, librosa's Slaney mel filterbank and
``power_to_db(ref=1.0, amin, top_db)``: librosa's log-mel within 1e-3 dB, of the clip cropped
or zero-padded to ``cfg.frames`` frames (docs/reproduction.md "Features"). ``make cache`` is
``python -m asd.cache``.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asd import AsdError
from asd.infra.config import FeatureConfig

# libsndfile's log line for a WAV file whose data chunk is shorter than its header announces:
# "data : <announced bytes> (should be <bytes the file holds>)".
_SHORT_DATA = re.compile(r"^data : (?P<announced>\d+) \(should be (?P<held>\d+)\)", re.M)


class AudioError(AsdError):
    """An audio file that cannot be used; the message names the file and the problem."""


class AudioWarning(UserWarning):
    """An audio file converted to fit the features (channels, rate, length), or silent."""


def read_audio(
    path: str | Path, cfg: FeatureConfig, channel: int | str = 0
) -> tuple[np.ndarray, list[str]]:
    """A clip as float32 (samples,), mono, at ``cfg.sample_rate``, and notes on what was
    converted (channels, rate, length) or is silent.

    ``channel`` (``data.channel``) picks one channel of a multi-channel file (0: the near
    microphone of the 2026 data, as the organisers' baseline) or their ``mean``. An unusable
    file raises an AudioError that names it.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file does not exist")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            log = f.extra_info
            # 16-bit files (the challenge's) are read as integers, which is faster.
            pcm16 = f.subtype == "PCM_16"
            wave = f.read(dtype="int16" if pcm16 else "float32", always_2d=True)  # (n, ch)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({err})") from None
    _check_complete(path, log)
    if wave.shape[0] == 0:
        raise AudioError(f"{path}: empty audio file (no samples)")
    if pcm16:  # scaled as libsndfile scales its float32 reads: the same numbers
        wave = np.multiply(wave, np.float32(1 / 32768), dtype=np.float32)
    elif not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    # Whatever was converted becomes a note, so the cache can say which clips did not fit.
    wave, notes = _one_channel(path, wave, channel)
    if rate != cfg.sample_rate:
        wave = resample(wave, rate, cfg.sample_rate)
        notes.append(f"sample rate {rate} Hz, resampled to {cfg.sample_rate} Hz")
    # The number of frames a centred STFT gives.
    frames = 1 + len(wave) // cfg.hop_length
    if frames != cfg.frames:
        how = "cropped" if frames > cfg.frames else "zero-padded"
        seconds = len(wave) / cfg.sample_rate
        notes.append(f"{seconds:.3f} s gives {frames} frames, {how} to {cfg.frames}")
    # Readable, but most likely a dead microphone or a muted channel.
    if not wave.any():
        notes.append(
            f"all samples are zero (digital silence): every log-mel value is the "
            f"{10 * np.log10(cfg.amin):.0f} dB floor (10 log10 amin)"
        )
    return np.ascontiguousarray(wave, dtype=np.float32), notes


def _check_complete(path: Path, log: str) -> None:
    """AudioError where libsndfile's ``log`` of reading ``path`` says the file is cut off."""
    # libsndfile reads what a cut-off file holds without an error; its log says so. A size of
    # 0xFFFFFFFF is a streaming writer's "unknown", not a cut.
    short = _SHORT_DATA.search(log)
    if short is None:
        return
    announced = int(short["announced"])
    held = int(short["held"])
    if held < announced < 0xFFFFFFFF:
        raise AudioError(
            f"{path}: truncated WAV file: the header announces {announced} bytes "
            f"of audio, the file holds {held}"
        )


def _one_channel(path: Path, wave: np.ndarray, channel: int | str) -> tuple[np.ndarray, list[str]]:
    """The channel ``channel`` of ``wave`` (samples, channels), or their mean; a mono file's
    only one whatever ``channel`` says. AudioError for a channel the file does not have."""
    channels = wave.shape[1]
    if channels == 1:
        return wave[:, 0], []
    if channel == "mean":
        return wave.mean(axis=1, dtype=np.float32), [f"{channels} channels, averaged to mono"]
    if not 0 <= int(channel) < channels:
        raise AudioError(
            f"{path}: has {channels} channels, so data.channel {channel} does not exist "
            f"(expected 0 to {channels - 1} or mean)"
        )
    return wave[:, int(channel)], [f"{channels} channels, channel {channel} taken (data.channel)"]


def warn_converted(notes: list[tuple[str, str]], what: str = "clip(s)") -> None:
    """One AudioWarning for the (path, note) pairs of ``read_audio`` over many files: how many
    files were converted, and the first three notes. One line however many files: a 2026
    data set converts every one of them (two channels)."""
    if notes:
        files = len({path for path, _ in notes})
        examples = "; ".join(f"{path}: {note}" for path, note in notes[:3])
        warnings.warn(
            f"{files} {what} were converted to fit the features (or are silent), e.g. {examples}",
            AudioWarning,
            stacklevel=3,
        )


def load_audio(path: str | Path, cfg: FeatureConfig, channel: int | str = 0) -> np.ndarray:
    """``read_audio``'s waveform; each note becomes an AudioWarning naming the file."""
    wave, notes = read_audio(path, cfg, channel)
    for note in notes:
        warnings.warn(f"{path}: {note}", AudioWarning, stacklevel=2)
    return wave


def resample(wave: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
    """Band-limited resampling (librosa's default, soxr 'HQ') as float32."""
    import librosa  # slow to import: only when needed

    return librosa.resample(wave, orig_sr=orig_rate, target_sr=rate).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """librosa's Slaney mel filterbank, float32 (n_mels, n_fft // 2 + 1)."""
    import librosa

    return librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=False,
        norm="slaney",
        dtype=np.float32,
    )


def log_mel_batch(waves: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel dB of clips at ``cfg.sample_rate``, on their device.  # (B, n) -> (B, T, M)

    Each clip is cropped or zero-padded to the samples that ``cfg.frames`` frames see.
    """
    # The centred STFT pads half a window on each side: the last frame starts at n and also
    # sees the next n_fft - n_fft // 2 samples.
    n = (cfg.frames - 1) * cfg.hop_length
    waves = waves[:, : n + cfg.n_fft - cfg.n_fft // 2].float()
    if waves.shape[1] < n:
        waves = torch.nn.functional.pad(waves, (0, n - waves.shape[1]))
    window = torch.hann_window(cfg.n_fft, periodic=True, device=waves.device)
    spec = torch.stft(
        waves,
        cfg.n_fft,
        cfg.hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )[..., : cfg.frames]  # (B, K, T)
    # For the power spectrogram, |X|^2 = re^2 + im^2 without abs()'s square root.
    if cfg.power == 2.0:
        power = spec.real.square().addcmul_(spec.imag, spec.imag)
    else:
        power = spec.abs().pow(cfg.power)
    mel = torch.from_numpy(mel_filterbank(cfg)).to(waves.device)  # (M, K)
    db = torch.matmul(power.transpose(1, 2), mel.T)  # (B, T, M)
    # librosa's power_to_db with ref = 1.0: 10 log10(max(power, amin)), in place.
    db.clamp_(min=cfg.amin).log10_().mul_(10.0)
    # The floor is clamped to again in float64 terms: float32's log10 can land an ulp below it.
    floor = 10.0 * float(np.log10(cfg.amin))
    if cfg.top_db is not None:
        floor = torch.clamp(db.amax(dim=(1, 2), keepdim=True) - cfg.top_db, min=floor)
    return db.clamp_(min=floor)


def log_mel(wave: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel of a mono clip (samples,), resampled if needed.  # -> float32 (T, M) dB"""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel: expected a mono waveform (samples,), got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("log_mel: the waveform holds NaN or infinite samples")
    if sample_rate != cfg.sample_rate:
        wave = resample(wave, sample_rate, cfg.sample_rate)
    with torch.no_grad():
        return log_mel_batch(torch.from_numpy(wave)[None], cfg)[0].numpy()  # (T, M)
