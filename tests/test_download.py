"""`make data` against a local HTTP server (127.0.0.1 only) that plays Zenodo's records API with
the real record ids, archive names and layout, Range requests included."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asd.download import RECORDS, STATE, DownloadError, download, main
from asd.infra.data import ground_truth_dir, index_dataset, read_csvs

DEV, TRAIN, TEST, TRUTH = RECORDS
MACHINES = ("fan", "ToyTrain")
WAV = b"RIFF" + bytes(40)  # the index reads names only


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: corruption shows
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def dev_zip(m: str) -> bytes:
    return make_zip(
        {
            f"{m}/train/section_00_source_train_normal_0000_a_1.wav": WAV,
            f"{m}/train/section_00_target_train_normal_0000_a_2.wav": WAV,
            f"{m}/source_test/section_00_source_test_anomaly_0000.wav": WAV,
            f"{m}/target_test/section_00_target_test_normal_0000.wav": WAV,
            f"__MACOSX/{m}/train/._section_00_source_train_normal_0000_a_1.wav": b"apple",
            f"{m}/readme.txt": b"stray",
            "LICENSE.txt": b"stray",
        }
    )


def eval_train_zip(m: str) -> bytes:
    return make_zip(
        {f"{m}/train/section_03_{d}_train_normal_0000_a_1.wav": WAV for d in ("source", "target")}
        | {"__MACOSX/._x": b"apple"}
    )


def eval_test_zip(m: str) -> bytes:
    return make_zip(
        {
            f"{m}/{d}_test/section_03_{d}_test_000{i}.wav": WAV
            for d in ("source", "target")
            for i in (0, 1)
        }
    )


def truth_zip() -> bytes:
    """Shaped like a snapshot of the evaluator's repository: its ground_truth_data/ folder."""
    top = "y-kawagu-dcase2021_task2_evaluator-abc1234/"
    members = {f"{top}README.md": b"evaluator", f"{top}dcase2021_task2_evaluator.py": b"#"}
    for m in MACHINES:
        for d in ("source", "target"):
            name = f"ground_truth_{m}_section_03_{d}_test.csv"
            members[f"{top}ground_truth_data/{name}"] = (
                f"section_03_{d}_test_0000.wav,0\nsection_03_{d}_test_0001.wav,1\n".encode()
            )
            members[f"__MACOSX/{top}ground_truth_data/._{name}"] = b"apple"
    return make_zip(members)


class FakeZenodo:
    """Records JSON at /records/<id>, files at /files/<id>/<key>; logs every request."""

    def __init__(self):
        self.files = {
            DEV.record_id: {f"dev_data_{m}.zip": dev_zip(m) for m in MACHINES},
            TRAIN.record_id: {f"eval_data_{m}_train.zip": eval_train_zip(m) for m in MACHINES},
            TEST.record_id: {f"eval_data_{m}_test.zip": eval_test_zip(m) for m in MACHINES},
            TRUTH.record_id: {"dcase2021_task2_evaluator-v1.0.zip": truth_zip()},
        }
        self.checksums: dict[str, str] = {}  # key -> checksum to announce instead of md5:<hex>
        self.cut: dict[str, int] = {}  # key -> bytes after which the next response breaks off
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.requests.append((self.path, self.headers.get("Range")))
                m = re.fullmatch(r"/records/(\d+)", self.path)
                if m and int(m[1]) in fake.files:
                    return self._send(200, json.dumps(fake.record_json(int(m[1]))).encode())
                m = re.fullmatch(r"/files/(\d+)/(.+)", self.path)
                if not (m and m[2] in fake.files.get(int(m[1]), {})):
                    return self._send(404, b"not found")
                data, start, code, extra = fake.files[int(m[1])][m[2]], 0, 200, {}
                rng = self.headers.get("Range")
                if rng and not fake.ignore_range:
                    start, code = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]), 206
                    extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(code, data[start:], extra, cut=fake.cut.pop(m[2], None))

            def _send(self, code, body, extra=None, cut=None):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[:cut])  # cut: announce everything, send part, hang up
                if cut is not None:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def record_json(self, record_id: int) -> dict:
        files = [
            {
                "id": "x",
                "key": key,
                "size": len(data),
                "checksum": self.checksums.get(key, f"md5:{hashlib.md5(data).hexdigest()}"),
                "links": {"self": f"{self.url}/files/{record_id}/{key}"},
            }
            for key, data in self.files[record_id].items()
        ]
        files.append(
            {
                "key": "README.md",
                "size": 3,
                "checksum": "md5:" + "0" * 32,
                "links": {"self": f"{self.url}/files/{record_id}/README.md"},
            }
        )
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


def test_make_data_fetches_all_four_records(zenodo, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["--list", "--base-url", zenodo.url, "--machines", "fan"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 5 and listed[-1].startswith("total 0.00 GB in 4 files")
    assert listed[0] == "4562016 dev_data_fan.zip 0.000 GB" and not root.exists()
    zenodo.requests.clear()
    assert main(["--root", str(root), "--base-url", zenodo.url]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root)
    index = index_dataset(root)
    assert len(index) == len(MACHINES) * (4 + 2 + 4)
    assert set(zip(index["dataset"], index["section"])) == {("dev_data", "00"), ("eval_data", "03")}
    truth = read_csvs(ground_truth_dir(root), "ground_truth", "anomaly", [0, 1])
    assert len(truth) == len(MACHINES) * 4 and set(truth["machine"]) == set(MACHINES)
    assert sorted(p.name for p in ground_truth_dir(root).iterdir()) == sorted(
        f"ground_truth_{m}_section_03_{d}_test.csv" for m in MACHINES for d in ("source", "target")
    )
    # stray entries stay out; archives are deleted, only the markers remain
    assert not (root / "__MACOSX").exists()
    assert not (root / "dev_data" / "fan" / "readme.txt").exists()
    assert sorted(p.name for p in (root / STATE).iterdir()) == sorted(
        f"{k}.done" for files in zenodo.files.values() for k in files
    )
    assert not list(root.glob(".unpack-*"))
    assert len(zenodo.requests) == 4 + 7  # 4 record JSONs, one GET per file
    zenodo.requests.clear()  # a second run finds every file done
    assert main(["--root", str(root), "--base-url", zenodo.url]) == 0
    assert [p for p, _ in zenodo.requests] == [f"/records/{r.record_id}" for r in RECORDS]


def test_other_word_order_bare_md5_machines_and_kept_archives(zenodo, tmp_path, monkeypatch):
    files = zenodo.files[TRAIN.record_id]
    files["eval_data_train_fan.zip"] = files.pop("eval_data_fan_train.zip")  # 2020 order
    zenodo.checksums["eval_data_train_fan.zip"] = hashlib.md5(
        files["eval_data_train_fan.zip"]
    ).hexdigest()  # bare hex
    monkeypatch.setenv("ASD_ZENODO_URL", zenodo.url)
    root = tmp_path / "data"
    assert main([f"data.root={root}", "--machines", "fan", "--keep-archives"]) == 0
    assert (root / "eval_data" / "fan" / "train").is_dir()
    assert not (root / "dev_data" / "ToyTrain").exists()
    truth = read_csvs(ground_truth_dir(root), "ground_truth", "anomaly", [0, 1])
    assert set(truth["machine"]) == {"fan"}
    assert (root / STATE / "eval_data_train_fan.zip").is_file()
    assert not zenodo.file_requests("dev_data_ToyTrain.zip")


def test_resume_a_part_file_and_a_broken_connection(zenodo, tmp_path):
    root = tmp_path / "data"
    data = zenodo.files[DEV.record_id]["dev_data_fan.zip"]
    (root / STATE).mkdir(parents=True)
    (root / STATE / "dev_data_fan.zip.part").write_bytes(data[:1000])
    big = make_zip(
        {
            f"fan/train/section_03_source_train_normal_000{i}_a_1.wav": bytes(1 << 20)
            for i in range(3)
        }
    )  # larger than one read, so a whole block arrives
    zenodo.files[TRAIN.record_id]["eval_data_fan_train.zip"] = big
    zenodo.cut["eval_data_fan_train.zip"] = len(big) // 2
    download(
        root,
        base_url=zenodo.url,
        records=[DEV, TRAIN],
        machines=["fan"],
        progress=False,
        timeout=10,
        retries=1,
    )
    assert zenodo.file_requests("dev_data_fan.zip") == [
        (f"/files/{DEV.record_id}/dev_data_fan.zip", "bytes=1000-")
    ]
    first, again = [r for _, r in zenodo.file_requests("eval_data_fan_train.zip")]
    assert first is None and 0 < int(re.fullmatch(r"bytes=(\d+)-", again)[1]) <= len(big) // 2
    assert len(list((root / "eval_data" / "fan" / "train").iterdir())) == 3
    assert (root / "dev_data" / "fan" / "target_test").is_dir()


def test_server_ignoring_range_restarts_the_file(zenodo, tmp_path):
    zenodo.ignore_range = True
    root = tmp_path / "data"
    (root / STATE).mkdir(parents=True)
    (root / STATE / "eval_data_fan_test.zip.part").write_bytes(b"x" * 500)  # stale bytes
    download(
        root,
        base_url=zenodo.url,
        records=[TEST],
        machines=["fan"],
        progress=False,
        keep_archives=True,
        timeout=10,
    )
    assert (root / STATE / "eval_data_fan_test.zip").read_bytes() == zenodo.files[TEST.record_id][
        "eval_data_fan_test.zip"
    ]


def test_bad_checksum_is_a_clear_error_and_keeps_nothing(zenodo, tmp_path):
    zenodo.checksums["dev_data_ToyTrain.zip"] = "md5:" + "0123456789abcdef" * 2
    root, state = tmp_path / "data", tmp_path / "data" / STATE
    with pytest.raises(DownloadError, match=r"dev_data_ToyTrain\.zip: MD5 hash .* does not match"):
        download(root, base_url=zenodo.url, records=[DEV], progress=False, timeout=10, retries=0)
    assert not [p for p in state.iterdir() if p.name.startswith("dev_data_ToyTrain")]
    assert not (root / "dev_data" / "ToyTrain").exists()
    assert (state / "dev_data_fan.zip.done").exists()  # the good one before it stays done
    zenodo.checksums.clear()
    zenodo.requests.clear()
    download(root, base_url=zenodo.url, records=[DEV], progress=False, timeout=10)
    assert [p for p, _ in zenodo.requests][1:] == [f"/files/{DEV.record_id}/dev_data_ToyTrain.zip"]


def test_broken_archives_leave_nothing_half_done(zenodo, tmp_path):
    files, root = zenodo.files[TRAIN.record_id], tmp_path / "data"
    good = files["eval_data_fan_train.zip"]
    i = good.index(b"RIFF")  # a stored member's bytes changed: its CRC no longer matches
    files["eval_data_fan_train.zip"] = good[:i] + b"JUNK" + good[i + 4 :]
    with pytest.raises(DownloadError, match=r"eval_data_fan_train\.zip: cannot unpack.*CRC"):
        download(root, base_url=zenodo.url, records=[TRAIN], progress=False, timeout=10)
    files["eval_data_fan_train.zip"] = make_zip({"fan/readme.txt": b"hi", "../evil": b"x"})
    with pytest.raises(DownloadError, match=r"expected a fan/ folder holding train"):
        download(root, base_url=zenodo.url, records=[TRAIN], progress=False, timeout=10)
    assert not (root / "eval_data" / "fan").exists() and not (tmp_path / "evil").exists()
    assert not list(root.glob(".unpack-*"))


def test_ground_truth_as_plain_csv_files_or_missing(zenodo, tmp_path, capsys):
    name = "ground_truth_fan_section_03_source_test.csv"
    zenodo.files[TRUTH.record_id] = {name: b"section_03_source_test_0000.wav,1\n"}
    root = download(tmp_path / "data", base_url=zenodo.url, records=[TRUTH], progress=False)
    assert [p.name for p in ground_truth_dir(root).iterdir()] == [name]
    zenodo.files[TRUTH.record_id] = {"unrelated.pdf": b"%PDF"}
    assert main(["--root", str(tmp_path / "other"), "--base-url", zenodo.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert "ground truth (record 5257674) could not be fetched" in err
    assert str(ground_truth_dir(tmp_path / "other")) in err
    assert (tmp_path / "other" / "eval_data" / "ToyTrain" / "source_test").is_dir()


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--root", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}/records/4562016: cannot fetch the development record" in err


def test_make_data_passes_data_args(repo):
    out = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(repo),
            "data",
            "VENV=/nonexistent",
            "DATA_ARGS=--machines fan --keep-archives",
            "ARGS=data.root=D",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = r"-m asd\.download\s+(--config \S+\s+)?--machines fan --keep-archives data\.root=D"
    assert re.search(command, out), out
