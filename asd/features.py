"""Log-mel features: audio loading, the log-mel spectrogram and a batched torch extractor.

The features follow report 2.1: STFT with a periodic Hann window of ``n_fft`` samples, hop
``hop_length``, centred with zero padding (librosa's ``center=True, pad_mode="constant"``); the
power spectrogram goes through librosa's Slaney mel filterbank (``htk=False, norm="slaney"``) and
to dB as ``librosa.power_to_db(ref=1.0, amin, top_db)``. The result matches
``librosa.power_to_db(librosa.feature.melspectrogram(...))`` to well under 1e-3 dB on recordings
and noise (float32 FFT: see ``LogMelExtractor`` for pure tones over digital silence).

Every clip gives exactly ``cfg.frames`` frames (313 for 10 s at 16 kHz). A longer waveform is
cropped and a shorter one zero-padded *before* the STFT (``fit_length``); because the centred STFT
pads with zeros anyway, the frames kept are exactly librosa's frames of the original clip (the
first ``cfg.frames`` of them for a longer clip; a shorter clip's missing frames are those of
silence, i.e. ``10 * log10(amin)`` dB).

``load_audio`` reads a WAV (plain 16-bit PCM with NumPy, anything else with soundfile) and
handles, with a warning naming the file:
several channels (mean of the channels), another sample rate (resampled with librosa/soxr),
a length that does not give ``cfg.frames`` frames (cropped or padded later by ``log_mel``), and
all-zero audio (readable; every log-mel value is the ``10 log10(amin)`` floor, -100 dB).
8-bit, 16/24/32-bit and float WAVs all read as float32 in [-1, 1]. An unreadable, truncated or
empty file, or one holding NaN or infinite samples, raises ``AudioError`` naming the file.
"""

from __future__ import annotations

from asd import AsdError

import functools
import logging
import struct
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from torch import nn

from asd.config import FeatureConfig

log = logging.getLogger(__name__)

MEL_BLOCKS = 8  # the banded mel matrix is applied as this many dense column blocks (4x fewer FLOPs)


class AudioError(AsdError):
    """An audio file that cannot be used; the message names the file and the problem."""


class AudioWarning(UserWarning):
    """An audio file converted to fit the features (channels, sample rate, length), or silent."""


# ----------------------------------------------------------------------------------------------
# Loading


def clip_samples(cfg: FeatureConfig) -> int:
    """Samples that determine the first ``cfg.frames`` centred STFT frames (160,256 by default)."""
    return (cfg.frames - 1) * cfg.hop_length + cfg.n_fft - cfg.n_fft // 2


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames of a centred STFT of ``n_samples`` samples (librosa's count)."""
    return 1 + n_samples // cfg.hop_length


def _scan_wav(path: Path) -> Optional[tuple[int, int, int, int]]:
    """Walk a RIFF/WAVE file's chunks: (channels, rate, data offset, data bytes) when it is plain
    16-bit PCM, else None (left to libsndfile). AudioError when the data chunk is cut short:
    libsndfile would silently read what is there, so a truncated copy would pass unnoticed.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None  # not plain RIFF (RF64, another format)
            fmt, pos = None, 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk, length = struct.unpack("<4sI", f.read(8))
                if chunk == b"fmt " and length >= 16:
                    body = f.read(16)
                    if len(body) < 16:
                        return None  # cut inside the header: libsndfile names the problem
                    fmt = struct.unpack("<HHIIHH", body)  # tag, channels, rate, _, align, bits
                elif chunk == b"data":
                    available = size - pos - 8
                    if length in (0, 0xFFFFFFFF):
                        return None  # streamed or empty: libsndfile decides
                    if length > available:
                        raise AudioError(f"{path}: truncated WAV file: the header announces "
                                         f"{length} bytes of audio, the file holds {available}")
                    if fmt is None or fmt[0] != 1 or fmt[5] != 16 or fmt[1] < 1 \
                            or fmt[4] != 2 * fmt[1]:
                        return None
                    return fmt[1], fmt[2], pos + 8, length
                pos += 8 + length + (length & 1)  # chunks are padded to an even size
            return None
    except OSError as err:
        raise AudioError(f"{path}: cannot read the file: {err}") from None


def read_audio(path: str | Path, cfg: FeatureConfig) -> tuple[np.ndarray, list[str]]:
    """Like ``load_audio`` but returns the notes (what was converted) instead of warning.

    Returns (float32 (samples,) at cfg.sample_rate, list of notes), so that a caller (the cache
    builder, via ``read_audio_into``) can summarise conversions over thousands of clips instead
    of warning once per clip.
    Plain 16-bit PCM WAVs (the DCASE files) are read with NumPy, 5x faster than libsndfile and
    bit-identical to it (sample / 32768); everything else goes through soundfile.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file does not exist")
    layout = _scan_wav(path)
    if layout is not None:
        channels, rate, offset, nbytes = layout
        frames = nbytes // (2 * channels)
        wave = np.empty(frames * channels, dtype=np.float32)
        _read_pcm16(path, offset, np.empty(len(wave), dtype="<i2"), wave)
        wave = wave.reshape(frames, channels)
    else:
        try:
            wave, rate = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise AudioError(f"{path}: not a readable audio file ({err})") from None
        if wave.shape[0] and not np.isfinite(wave).all():
            raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if wave.shape[0] == 0:
        raise AudioError(f"{path}: empty audio file (no samples)")
    channels = wave.shape[1]
    wave = wave.mean(axis=1, dtype=np.float32) if channels > 1 else wave[:, 0]
    if rate != cfg.sample_rate:
        wave = resample(wave, rate, cfg.sample_rate)
    notes = _conversion_notes(channels, rate, len(wave), not wave.any(), cfg)
    return np.ascontiguousarray(wave, dtype=np.float32), notes


def _read_pcm16(path: Path, offset: int, pcm: np.ndarray, out: np.ndarray) -> None:
    """Read ``len(pcm)`` 16-bit samples at byte ``offset`` into ``pcm``, scaled into ``out``
    as float32 sample / 32768 (libsndfile's numbers, bit for bit)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(pcm).cast("B"))
    except OSError as err:
        raise AudioError(f"{path}: cannot read the file: {err}") from None
    if got != pcm.nbytes:  # the file shrank since _scan_wav looked at it
        raise AudioError(f"{path}: truncated WAV file: expected {pcm.nbytes} bytes of audio, "
                         f"read {got}")
    np.multiply(pcm, np.float32(1 / 32768), out=out)


def _conversion_notes(channels: int, rate: int, n_samples: int, silent: bool,
                      cfg: FeatureConfig) -> list[str]:
    """What ``read_audio`` converted: channels, rate, length (at cfg.sample_rate), silence."""
    notes = []
    if channels > 1:
        notes.append(f"{channels} channels, averaged to mono")
    if rate != cfg.sample_rate:
        notes.append(f"sample rate {rate} Hz, resampled to {cfg.sample_rate} Hz")
    got = n_frames(n_samples, cfg)
    if got != cfg.frames:
        how = "cropped" if got > cfg.frames else "zero-padded"
        notes.append(f"{n_samples / cfg.sample_rate:.3f} s gives {got} frames, {how} to "
                     f"{cfg.frames}")
    if silent:  # readable, but most likely a dead microphone or a muted channel
        notes.append(f"all samples are zero (digital silence): every log-mel value is the "
                     f"{10 * np.log10(cfg.amin):.0f} dB floor (10 log10 amin)")
    return notes


_PCM = threading.local()  # per-thread int16 buffer of read_audio_into


def read_audio_into(path: str | Path, cfg: FeatureConfig, out: np.ndarray) -> list[str]:
    """Decode a clip straight into ``out`` (float32, ``clip_samples(cfg)``); return its notes.

    ``out`` receives exactly ``fit_length(read_audio(path, cfg)[0], cfg)``, and the notes and
    errors are ``read_audio``'s. A plain 16-bit mono WAV at ``cfg.sample_rate`` no longer than
    the clip (every DCASE file) is read into a reused per-thread buffer and scaled into ``out``:
    no per-clip allocation, so no page faults, in the cache builder's inner loop. Anything else
    goes through ``read_audio``.
    """
    path = Path(path)
    layout = _scan_wav(path) if path.is_file() else None
    samples = layout[3] // 2 if layout is not None else 0
    if layout is None or layout[:2] != (1, cfg.sample_rate) or not 0 < samples <= len(out):
        wave, notes = read_audio(path, cfg)
        n = min(len(wave), len(out))
        out[:n] = wave[:n]
        out[n:] = 0.0
        return notes
    pcm = getattr(_PCM, "buffer", None)
    if pcm is None or len(pcm) < len(out):
        pcm = _PCM.buffer = np.empty(len(out), dtype="<i2")
    _read_pcm16(path, layout[2], pcm[:samples], out[:samples])
    out[samples:] = 0.0
    return _conversion_notes(1, cfg.sample_rate, samples, not out[:samples].any(), cfg)


def load_audio(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Read a clip as float32 (samples,) at ``cfg.sample_rate``, mono; see the module docstring.

    Warns (AudioWarning, naming the file) when channels were averaged, the clip was resampled, or
    its length will be cropped/padded by ``log_mel``; raises AudioError when it cannot be used.
    """
    wave, notes = read_audio(path, cfg)
    for note in notes:
        warnings.warn(f"{path}: {note}", AudioWarning, stacklevel=2)
    return wave


def resample(wave: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
    """Band-limited resampling (librosa's default, soxr 'HQ') as float32."""
    import librosa  # slow to import; only needed here and for the mel matrix

    return librosa.resample(wave, orig_sr=orig_rate, target_sr=rate).astype(np.float32)


def fit_length(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Crop or zero-pad (samples,) to ``clip_samples(cfg)``; leaves the first frames unchanged."""
    n = clip_samples(cfg)
    if len(wave) >= n:
        return wave[:n]
    return np.pad(wave, (0, n - len(wave)))


# ----------------------------------------------------------------------------------------------
# Log-mel


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)),
                    mel * (200.0 / 3))


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """The Slaney mel filterbank, float32 (n_mels, n_fft//2+1), equal to librosa.filters.mel
    (htk=False, norm='slaney'); computed here in NumPy because librosa's first call takes seconds.
    """
    bins = np.linspace(0.0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)  # (K,) Hz
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    width = np.diff(edges)  # (M + 1,)
    rise = (bins[None, :] - edges[:-2, None]) / width[:-1, None]  # (M, K)
    fall = (edges[2:, None] - bins[None, :]) / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rise, fall))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: equal area per band
    return weights.astype(np.float32)


class LogMelExtractor(nn.Module):
    """Batched log-mel: (B, samples) float32 waveforms -> (B, cfg.frames, cfg.n_mels) dB.

    Waveforms of any length are cropped/zero-padded to ``clip_samples(cfg)`` first. The STFT is
    framing + ``torch.fft.rfft`` (about 4x faster on CPU than ``torch.stft``, same numbers), and
    the mel matrix, which is banded, is applied as ``MEL_BLOCKS`` dense blocks of bands over the
    frequency bins they touch. All in float32: bins more than about 90 dB below their frame's
    peak (pure synthetic tones over digital silence) can differ from librosa, which runs its FFT
    in float64, by up to ~0.01 dB; recordings and noise agree to ~1e-4 dB.

    On CPU clips go one at a time through reused per-thread buffers, which stay in the CPU
    cache (batches are memory-bound; a fresh buffer costs a page fault per 4 KiB); the mel
    blocks are written straight into the output's columns and the dB conversion is NumPy's.
    ``cpu_buffer`` + ``from_buffer`` let a caller decode a clip straight into the STFT's input
    (the cache builder's loop). On other devices it is all torch, batched (``_forward_batched``).
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        mel = mel_filterbank(cfg)  # (M, K)
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True,
                                                         dtype=torch.float32), persistent=False)
        # Bands b0..b1 only touch bins k0..k1; each block's weights are repeated for the real and
        # imaginary parts, so |X|^2 @ W becomes (re^2, im^2 interleaved) @ W2: one pass fewer.
        self.blocks: list[tuple[int, int, int, int]] = []  # (band b0, b1, bin k0, k1)
        step = -(-cfg.n_mels // MEL_BLOCKS)
        for b in range(0, cfg.n_mels, step):
            used = np.flatnonzero((mel[b:b + step] != 0).any(axis=0))
            lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
            self.blocks.append((b, min(b + step, cfg.n_mels), lo, hi))
            weights = torch.from_numpy(mel[b:b + step, lo:hi].T.copy())  # (bins, bands)
            self.register_buffer(f"mel_block{len(self.blocks) - 1}",
                                 weights.repeat_interleave(2, dim=0), persistent=False)

    def forward(self, wave: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, samples) -> (B, frames, mels) dB, written into ``out`` when given (no autograd)."""
        cfg = self.cfg
        wave = wave.to(torch.float32)  # (B, samples)
        if out is None:
            out = torch.empty(wave.shape[0], cfg.frames, cfg.n_mels, device=wave.device)
        if wave.device.type != "cpu":
            return self._forward_batched(wave, out)
        length = min(wave.shape[-1], clip_samples(cfg))
        buf = self.cpu_buffer()
        for i in range(wave.shape[0]):
            buf[:length] = wave[i, :length].numpy()
            buf[length:] = 0.0
            self.from_buffer(out[i])
        return out

    def _forward_batched(self, wave: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``forward`` in torch on the whole batch at once: the path off the CPU."""
        cfg = self.cfg
        batch, length = wave.shape[0], min(wave.shape[-1], clip_samples(cfg))
        half = cfg.n_fft // 2
        ws = self._workspace(max(batch, 1), wave.device, batched=True)
        # centred STFT = zeros on both sides: the left ones stay in ws.padded, the right ones
        # are the clip's zero padding up to clip_samples
        ws.padded[:batch, half:half + length] = wave[:, :length]
        ws.padded[:batch, half + length:] = 0.0
        self._log_mel(ws, batch, out)
        return out

    def cpu_buffer(self) -> np.ndarray:
        """This thread's CPU input buffer, float32 (``clip_samples(cfg)``,): put a clip's samples
        in it (zeros after a short clip, e.g. with ``read_audio_into``), then ``from_buffer``."""
        ws = self._workspace(1, torch.device("cpu"), batched=False)
        return ws.padded[0, self.cfg.n_fft // 2:].numpy()

    def from_buffer(self, out: torch.Tensor) -> torch.Tensor:
        """Log-mel of the clip in ``cpu_buffer()`` into ``out``, CPU float32 (frames, mels) dB."""
        cfg = self.cfg
        ws = self._workspace(1, torch.device("cpu"), batched=False)
        self._mel_power(self._power_parts(ws, 1)[0], out)
        # power_to_db with ref = 1.0, in NumPy: half the time of torch's three calls here
        db = out.numpy()
        np.maximum(db, np.float32(cfg.amin), out=db)
        np.log10(db, out=db)
        np.multiply(db, np.float32(10.0), out=db)
        # NumPy's float32 log10 is off by an ulp at amin (-100.00001 dB): the floor is exact
        np.maximum(db, np.float32(10.0 * np.log10(cfg.amin)), out=db)
        if cfg.top_db is not None:
            np.maximum(db, db.max() - np.float32(cfg.top_db), out=db)
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_local", None)  # per-thread buffers: neither picklable nor worth copying
        return state

    def _workspace(self, step: int, device: torch.device, batched: bool) -> "_Workspace":
        """This thread's buffers for ``step`` clips on ``device``: the per-clip CPU path's, or
        the batched path's (apart, so a batch never reallocates the buffer that ``cpu_buffer``
        handed out)."""
        local = self.__dict__.setdefault("_local", threading.local())
        key = "batched" if batched else "clip"
        ws = getattr(local, key, None)
        if ws is None or ws.size < step or ws.padded.device != device:
            ws = _Workspace(self, step, device)
            setattr(local, key, ws)
        return ws

    def _power_parts(self, ws: "_Workspace", b: int) -> torch.Tensor:
        """ws.padded[:b] -> (b, T, 2K) in ws.parts: re^2, im^2 interleaved (or |X|^p, 0)."""
        cfg = self.cfg
        frames = ws.frames[:b]  # (b, T, n_fft)
        torch.mul(ws.padded[:b].unfold(-1, cfg.n_fft, cfg.hop_length), self.window, out=frames)
        spec = ws.spec[:b]  # (b, T, K) complex
        torch.fft.rfft(frames, dim=-1, out=spec)
        parts = ws.parts[:b]
        if cfg.power == 2.0:
            torch.square(torch.view_as_real(spec).flatten(-2), out=parts)
        else:  # |X|^p as the "real part", zero "imaginary part": the same blocks apply
            pairs = parts.unflatten(-1, (-1, 2))
            pairs[..., 0] = spec.abs().pow(cfg.power)
            pairs[..., 1] = 0.0
        return parts

    def _mel_power(self, parts: torch.Tensor, out: torch.Tensor) -> None:
        """(..., T, 2K) -> mel power (..., T, M), each block straight into its columns of out."""
        for i, (b0, b1, lo, hi) in enumerate(self.blocks):
            torch.matmul(parts[..., 2 * lo:2 * hi], getattr(self, f"mel_block{i}"),
                         out=out[..., b0:b1])

    def _log_mel(self, ws: "_Workspace", b: int, out: torch.Tensor) -> None:
        """ws.padded[:b] -> out (b, frames, mels) in dB, in torch (batched, any device)."""
        cfg = self.cfg
        self._mel_power(self._power_parts(ws, b), out)
        out.clamp_(min=cfg.amin).log10_().mul_(10.0)  # power_to_db with ref = 1.0
        if cfg.top_db is not None:
            peak = out.amax(dim=(-2, -1), keepdim=True)
            torch.maximum(out, peak - cfg.top_db, out=out)


class _Workspace:
    """Buffers of LogMelExtractor for ``size`` clips on one device, reused call after call."""

    def __init__(self, ex: LogMelExtractor, size: int, device: torch.device):
        cfg = ex.cfg
        k = cfg.n_fft // 2 + 1
        self.size = size
        self.padded = torch.zeros(size, cfg.n_fft // 2 + clip_samples(cfg), device=device)
        self.frames = torch.empty(size, cfg.frames, cfg.n_fft, device=device)
        self.spec = torch.empty(size, cfg.frames, k, dtype=torch.complex64, device=device)
        self.parts = torch.empty(size, cfg.frames, 2 * k, device=device)


@functools.lru_cache(maxsize=8)
def _extractor(cfg: FeatureConfig) -> LogMelExtractor:
    return LogMelExtractor(cfg)


def log_mel(wave: np.ndarray, sample_rate: int, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel spectrogram of a mono clip: float32 (cfg.frames, cfg.n_mels), unnormalised dB.

    ``wave`` (samples,) is resampled when ``sample_rate`` differs from ``cfg.sample_rate`` and
    cropped/zero-padded to give exactly ``cfg.frames`` frames (see the module docstring).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel: expected a mono waveform (samples,), got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("log_mel: the waveform holds NaN or infinite samples")
    if sample_rate != cfg.sample_rate:
        wave = resample(wave, sample_rate, cfg.sample_rate)
    x = torch.from_numpy(np.ascontiguousarray(wave))[None]  # (1, samples)
    with torch.no_grad():
        return _extractor(cfg)(x)[0].numpy()  # (T, M)


# ----------------------------------------------------------------------------------------------
# Command line: `make cache`


def main(argv: list[str] | None = None) -> int:
    """``python -m asd.features [--config C] [--workers N] [key.sub=value ...]``: the cache."""
    import argparse

    from asd.cache import CacheError, build_cache
    from asd.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m asd.features",
                                     description="Build (or reuse) the log-mel cache of data.root; "
                                                 "prints the cache folder as the last line.")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--config", default="config.yml", help="config file (default: config.yml)")
    parser.add_argument("--root", default=None, help="data root (default: data.root of the config)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding threads (default: the usable CPU cores)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ns.config, ns.overrides)
        cache = build_cache(cfg, root=ns.root, progress=True, workers=ns.workers)
    except (ConfigError, CacheError, AudioError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(cache)} clips, features {tuple(cache.features.shape)} {cache.features.dtype}")
    print(cache.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
