"""`make data` against a local HTTP server (127.0.0.1 only) that plays Zenodo, Range included."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asd.data import index_dataset
from asd.download import (RECORDS, STATE, DownloadError, Record, download, fetch, main,
                          record_files)

DEV, TRAIN, TEST = RECORDS


def clip_bytes(seed: int) -> bytes:
    """A tiny valid WAV (not audio-checked here; the index only reads names)."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.full(160, seed / 100, dtype=np.float32), 16000, format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: byte-level corruption shows
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def dev_zip(machine: str, prefix: str = "") -> bytes:
    return make_zip({
        f"{prefix}{machine}/train/section_00_source_train_normal_0000_a_1.wav": clip_bytes(1),
        f"{prefix}{machine}/train/section_00_target_train_normal_0000_a_2.wav": clip_bytes(2),
        f"{prefix}{machine}/source_test/section_00_source_test_anomaly_0000.wav": clip_bytes(3),
        f"{prefix}{machine}/target_test/section_00_target_test_normal_0000.wav": clip_bytes(4),
    })


def eval_train_zip(machine: str) -> bytes:
    return make_zip({
        f"{machine}/train/section_03_source_train_normal_0000_a_1.wav": clip_bytes(5),
        f"{machine}/train/section_03_target_train_normal_0000_a_1.wav": clip_bytes(6),
    })


def eval_test_zip(machine: str) -> bytes:
    return make_zip({
        f"{machine}/source_test/section_03_source_test_0000.wav": clip_bytes(7),
        f"{machine}/target_test/section_03_target_test_0000.wav": clip_bytes(8),
    })


class FakeZenodo:
    """Records JSON at /records/<id>, files at /files/<id>/<key>; logs every request."""

    def __init__(self):
        self.files: dict[int, dict[str, bytes]] = {
            DEV.record_id: {"dev_data_fan.zip": dev_zip("fan"),
                            "dev_data_valve.zip": dev_zip("valve", prefix="dev_data/")},
            TRAIN.record_id: {"eval_data_train_fan.zip": eval_train_zip("fan"),
                              "eval_data_train_valve.zip": eval_train_zip("valve")},
            TEST.record_id: {"eval_data_test_fan.zip": eval_test_zip("fan"),
                             "eval_data_test_valve.zip": eval_test_zip("valve")},
        }
        self.checksums: dict[str, str] = {}  # key -> md5 to announce instead of the real one
        self.cut: dict[str, int] = {}  # key -> bytes after which the next response breaks off
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                fake.requests.append((self.path, self.headers.get("Range")))
                m = re.fullmatch(r"/records/(\d+)", self.path)
                if m and int(m[1]) in fake.files:
                    return self._send(200, json.dumps(fake.record_json(int(m[1]))).encode(),
                                      "application/json")
                m = re.fullmatch(r"/files/(\d+)/(.+)", self.path)
                if m and m[2] in fake.files.get(int(m[1]), {}):
                    return self._file(m[2], fake.files[int(m[1])][m[2]])
                self._send(404, b"not found", "text/plain")

            def _send(self, code, body, ctype, extra=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _file(self, key, data):
                start, code, extra = 0, 200, {"Accept-Ranges": "bytes"}
                rng = self.headers.get("Range")
                if rng and not fake.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
                    if start >= len(data):
                        return self._send(416, b"", "text/plain",
                                          {"Content-Range": f"bytes */{len(data)}"})
                    code = 206
                    extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                cut = fake.cut.pop(key, None)
                self.send_response(code)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if cut is not None:  # announce everything, send part of it, hang up
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def record_json(self, record_id: int) -> dict:
        files = []
        for key, data in self.files[record_id].items():
            md5 = self.checksums.get(key, hashlib.md5(data).hexdigest())
            files.append({"id": key, "key": key, "size": len(data), "checksum": f"md5:{md5}",
                          "links": {"self": f"{self.url}/files/{record_id}/{key}"}})
        files.append({"key": "README.md", "size": 3, "checksum": "md5:" + "0" * 32,
                      "links": {"self": f"{self.url}/files/{record_id}/README.md"}})
        return {"id": record_id, "metadata": {"title": "fake"}, "files": files}

    def file_requests(self, key: str) -> list:
        return [r for r in self.requests if r[0].endswith("/" + key)]


@pytest.fixture
def zenodo():
    fake = FakeZenodo()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_full_download_gives_the_challenge_layout(zenodo, tmp_path):
    root = download(tmp_path / "data", base_url=zenodo.url, progress=False, timeout=10)
    for machine in ("fan", "valve"):
        for sub in ("train", "source_test", "target_test"):
            assert (root / "dev_data" / machine / sub).is_dir()
            assert (root / "eval_data" / machine / sub).is_dir()
    index = index_dataset(root)
    assert len(index) == 2 * (4 + 2 + 2)
    assert set(index["section"]) == {"00", "03"}
    assert index[index["dataset"] == "eval_data"]["label"].map(lambda v: v is None).sum() == 4
    state = root / STATE
    assert sorted(p.name for p in state.iterdir()) == sorted(
        f"{k}.done" for files in zenodo.files.values() for k in files)  # archives deleted
    assert not list(root.glob(".unpack-*"))
    assert len(zenodo.requests) == 3 + 6  # 3 record JSONs, one GET per archive


def test_second_run_skips_finished_archives(zenodo, tmp_path):
    download(tmp_path / "data", base_url=zenodo.url, progress=False, timeout=10)
    zenodo.requests.clear()
    download(tmp_path / "data", base_url=zenodo.url, progress=False, timeout=10)
    assert [p for p, _ in zenodo.requests] == [f"/records/{r.record_id}" for r in RECORDS]


def test_resume_from_a_partial_part_file(zenodo, tmp_path):
    root = tmp_path / "data"
    data = zenodo.files[DEV.record_id]["dev_data_fan.zip"]
    (root / STATE).mkdir(parents=True)
    (root / STATE / "dev_data_fan.zip.part").write_bytes(data[:1000])
    download(root, base_url=zenodo.url, records=[DEV], machines=["fan"], progress=False,
             keep_archives=True, timeout=10)
    assert zenodo.file_requests("dev_data_fan.zip") == [
        (f"/files/{DEV.record_id}/dev_data_fan.zip", "bytes=1000-")]
    assert (root / STATE / "dev_data_fan.zip").read_bytes() == data
    assert (root / "dev_data" / "fan" / "train").is_dir()


def test_broken_connection_resumes_with_range(zenodo, tmp_path):
    zenodo.cut["eval_data_train_fan.zip"] = 700
    root = download(tmp_path / "data", base_url=zenodo.url, records=[TRAIN], machines=["fan"],
                    progress=False, timeout=10)
    assert [r for _, r in zenodo.file_requests("eval_data_train_fan.zip")] == [None, "bytes=700-"]
    assert len(list((root / "eval_data" / "fan" / "train").iterdir())) == 2


def test_server_ignoring_range_restarts_the_file(zenodo, tmp_path):
    zenodo.ignore_range = True
    root = tmp_path / "data"
    data = zenodo.files[TEST.record_id]["eval_data_test_fan.zip"]
    (root / STATE).mkdir(parents=True)
    (root / STATE / "eval_data_test_fan.zip.part").write_bytes(b"x" * 500)  # stale bytes
    download(root, base_url=zenodo.url, records=[TEST], machines=["fan"], progress=False,
             keep_archives=True, timeout=10)
    assert (root / STATE / "eval_data_test_fan.zip").read_bytes() == data


def test_bad_checksum_is_a_clear_error_and_keeps_nothing(zenodo, tmp_path):
    zenodo.checksums["dev_data_valve.zip"] = "0123456789abcdef0123456789abcdef"
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"dev_data_valve\.zip: MD5 checksum mismatch"):
        download(root, base_url=zenodo.url, records=[DEV], progress=False, timeout=10)
    state = root / STATE
    assert not (state / "dev_data_valve.zip").exists()
    assert not (state / "dev_data_valve.zip.part").exists()
    assert not (state / "dev_data_valve.zip.done").exists()
    assert not (root / "dev_data" / "valve").exists()
    assert (state / "dev_data_fan.zip.done").exists()  # the good archive before it stays done
    zenodo.checksums.clear()
    zenodo.requests.clear()
    download(root, base_url=zenodo.url, records=[DEV], progress=False, timeout=10)
    assert [p for p, _ in zenodo.requests][1:] == [f"/files/{DEV.record_id}/dev_data_valve.zip"]


def test_archive_that_fails_to_unpack(zenodo, tmp_path):
    good = zenodo.files[TRAIN.record_id]["eval_data_train_valve.zip"]
    i = good.index(b"RIFF")  # corrupt a stored member's bytes: its CRC no longer matches
    zenodo.files[TRAIN.record_id]["eval_data_train_valve.zip"] = good[:i] + b"JUNK" + good[i + 4:]
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"eval_data_train_valve\.zip.*(corrupt|CRC)"):
        download(root, base_url=zenodo.url, records=[TRAIN], progress=False, timeout=10)
    assert not (root / "eval_data" / "valve").exists()
    assert not list(root.glob(".unpack-*"))
    assert not (root / STATE / "eval_data_train_valve.zip.done").exists()
    zenodo.files[TRAIN.record_id]["eval_data_train_valve.zip"] = b"this is not a zip file"
    with pytest.raises(DownloadError, match=r"cannot unpack eval_data_train_valve\.zip"):
        download(root, base_url=zenodo.url, records=[TRAIN], progress=False, timeout=10)
    assert not (root / "eval_data" / "valve").exists()


def test_archive_without_the_expected_folders(zenodo, tmp_path):
    zenodo.files[TEST.record_id] = {"eval_data_test_fan.zip": make_zip({"fan/readme.txt": b"hi"})}
    with pytest.raises(DownloadError, match=r"expected a fan/ folder holding source_test"):
        download(tmp_path / "data", base_url=zenodo.url, records=[TEST], progress=False,
                 timeout=10)
    assert not (tmp_path / "data" / "eval_data").exists()


def test_unsafe_member_paths_are_refused(zenodo, tmp_path):
    zenodo.files[TEST.record_id] = {"eval_data_test_fan.zip": make_zip({"../evil.txt": b"x"})}
    with pytest.raises(DownloadError, match="unsafe member path"):
        download(tmp_path / "data", base_url=zenodo.url, records=[TEST], progress=False,
                 timeout=10)
    assert not (tmp_path / "evil.txt").exists()


def test_record_metadata_errors(zenodo, tmp_path):
    missing = Record(1, "missing", "dev_data", r"^(?P<machine>.+)\.zip$", ("train",))
    with pytest.raises(DownloadError, match=r"/records/1: HTTP 404"):
        record_files(missing, zenodo.url, timeout=10)
    files = record_files(DEV, zenodo.url, timeout=10)
    assert [(f.key, f.machine) for f in files] == [("dev_data_fan.zip", "fan"),
                                                  ("dev_data_valve.zip", "valve")]
    assert all(re.fullmatch(r"[0-9a-f]{32}", f.md5) and f.size > 0 for f in files)
    with pytest.raises(DownloadError, match="only http"):
        fetch(dataclasses.replace(files[0], url="file:///etc/passwd"), tmp_path / "x.zip",
              progress=False)


def test_unreachable_server_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a free port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}.*cannot fetch"):
        download(tmp_path / "data", base_url=f"http://127.0.0.1:{port}", progress=False,
                 timeout=5)


def test_cli_and_environment_base_url(zenodo, tmp_path, repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    monkeypatch.setenv("ASD_ZENODO_URL", zenodo.url)
    assert main([f"data.root={tmp_path / 'data'}", "--machines", "fan"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "data")
    assert (tmp_path / "data" / "eval_data" / "fan" / "target_test").is_dir()
    assert not (tmp_path / "data" / "dev_data" / "valve").exists()
    monkeypatch.delenv("ASD_ZENODO_URL")
    zenodo.checksums["eval_data_test_valve.zip"] = "f" * 32
    assert main([f"data.root={tmp_path / 'data'}", "--base-url", zenodo.url]) == 2
    assert "eval_data_test_valve.zip: MD5 checksum mismatch" in capsys.readouterr().err
