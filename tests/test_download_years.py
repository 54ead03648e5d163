"""`make data` for every DCASE year (data.year 2021-2026) against a loopback server (127.0.0.1)
that plays Zenodo's records API with each year's real record ids and archive names, and GitHub's
zip of each year's evaluator repository (the eval ground truth)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asd.download import YEARS, DownloadError, download
from asd.infra.data import detect_layout, index_dataset, with_ground_truth

WAV = b"RIFF" + bytes(40)  # the index reads names only
# two machine types of each year's real lists (YEARS.md), a dev and an eval one
MACHINES = {
    2022: ("fan", "ToyTrain"),
    2023: ("bearing", "Vacuum"),
    2024: ("gearbox", "3DPrinter"),
    2025: ("valve", "AutoTrash"),
    2026: ("ToyCar", "ToyDrone"),
}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def section(year: int, dataset: str) -> str:
    """2022: dev sections 00-02, eval 03-05 (one of each here); 2023 on: 00 only."""
    return ("00" if dataset == "dev" else "03") if year == 2022 else "00"


def dev_zip(year: int, m: str) -> bytes:
    s = section(year, "dev")
    return make_zip(
        {
            f"{m}/train/section_{s}_source_train_normal_0000_a_1.wav": WAV,
            f"{m}/train/section_{s}_target_train_normal_0000_a_2.wav": WAV,
            f"{m}/test/section_{s}_source_test_anomaly_0000_a_1.wav": WAV,
            f"{m}/test/section_{s}_target_test_normal_0000_a_2.wav": WAV,
            f"{m}/attributes_{s}.csv": b"file_name,d1p,d1v\n",
            f"__MACOSX/{m}/train/._x.wav": b"apple",
        }
    )


def eval_train_zip(year: int, m: str) -> bytes:
    s = section(year, "eval")
    return make_zip(
        {f"{m}/train/section_{s}_{d}_train_normal_0000_.wav": WAV for d in ("source", "target")}
    )


def eval_test_zip(year: int, m: str) -> bytes:
    s = section(year, "eval")
    return make_zip({f"{m}/test/section_{s}_000{i}.wav": WAV for i in range(4)})


def evaluator_zip(year: int, repo: str, m: str) -> bytes:
    """Shaped like GitHub's zip of the evaluator repository."""
    top = f"{repo.split('/')[1]}-main/"
    name = f"ground_truth_{m}_section_{section(year, 'eval')}_test.csv"
    rows = {"ground_truth_data": "0,1,0,1", "ground_truth_domain": "0,0,1,1"}
    members = {f"{top}README.md": b"evaluator"}
    for folder, values in rows.items():
        text = "".join(
            f"section_{section(year, 'eval')}_000{i}.wav,{v}\n"
            for i, v in enumerate(values.split(","))
        )
        members[f"{top}{folder}/{name}"] = text.encode()
    members[f"{top}ground_truth_attributes/{name}"] = b"ignored"
    return make_zip(members)


def year_files(year: int) -> dict[int, dict[str, bytes]]:
    """The archives of each record of ``year``, with the year's real names."""
    dev, train, test = YEARS[year].records
    m_dev, m_eval = MACHINES[year]
    files = {
        dev.record_id: {f"dev_{m_dev}.zip": dev_zip(year, m_dev)},
        train.record_id: {f"eval_data_{m_eval}_train.zip": eval_train_zip(year, m_eval)},
    }
    if year == 2026:  # ToyCar as dev_ToyCar_r2.zip beside a first version
        files[dev.record_id][f"dev_{m_dev}_r2.zip"] = dev_zip(year, m_dev)
        files[dev.record_id][f"dev_{m_dev}.zip"] = b"the first version, not wanted"
    if year == 2024:  # 3DPrinter's additional training clips as _train_r2.zip
        files[train.record_id] = {
            f"eval_data_{m_eval}_train_r2.zip": eval_train_zip(year, m_eval),
            f"eval_data_{m_eval}_train.zip": b"the first version, not wanted",
        }
    if test.record_id is not None:
        files[test.record_id] = {f"eval_data_{m_eval}_test.zip": eval_test_zip(year, m_eval)}
    return files


class FakeServer:
    """Records JSON at /records/<id>, files at /files/<id>/<key>, evaluator zips at
    /<owner>/<repo>/archive/refs/heads/main.zip."""

    def __init__(self, year: int):
        self.files = year_files(year)
        repo = YEARS[year].evaluator
        self.archives = {} if repo is None else {repo: evaluator_zip(year, repo, MACHINES[year][1])}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.requests.append(self.path)
                body = fake.answer(self.path)
                self.send_response(404 if body is None else 200)
                body = body or b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def answer(self, path: str) -> bytes | None:
        """The body for ``path``, None for 404."""
        if m := re.fullmatch(r"/records/(\d+)", path):
            found = int(m[1]) in self.files
            return json.dumps(self.record_json(int(m[1]))).encode() if found else None
        if m := re.fullmatch(r"/files/(\d+)/(.+)", path):
            return self.files.get(int(m[1]), {}).get(m[2])
        if m := re.fullmatch(r"/(.+/.+)/archive/refs/heads/main\.zip", path):
            return self.archives.get(m[1])
        return None

    def record_json(self, record_id: int) -> dict:
        files = [
            {
                "key": key,
                "size": len(data),
                "checksum": f"md5:{hashlib.md5(data).hexdigest()}",
                "links": {"self": f"{self.url}/files/{record_id}/{key}"},
            }
            for key, data in self.files[record_id].items()
        ]
        return {"id": record_id, "files": files}


@pytest.fixture
def server(request):
    fake = FakeServer(request.param)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.mark.parametrize("server", [2022, 2023, 2024, 2025], indirect=True)
def test_each_year_fetches_its_records_and_evaluator_ground_truth(server, tmp_path):
    year = next(y for y, m in MACHINES.items() if YEARS[y].records[0].record_id in server.files)
    root = download(
        tmp_path / "data", base_url=server.url, truth_url=server.url, year=year, progress=False
    )
    m_dev, m_eval = MACHINES[year]
    assert (root / "dev_data" / m_dev / f"attributes_{section(year, 'dev')}.csv").is_file()
    layout = detect_layout(root)
    assert layout.name == ("dcase2022" if year == 2022 else "dcase2023")
    index = index_dataset(root, layout)
    test = index[(index["dataset"] == "eval_data") & (index["split"] == "test")]
    assert len(test) == 4 and test["label"].isna().all() and test["domain"].isna().all()
    truth = with_ground_truth(index, root).loc[test.index]
    assert truth["label"].tolist() == ["normal", "anomaly", "normal", "anomaly"]
    assert truth["domain"].tolist() == ["source", "source", "target", "target"]
    assert index[index["split"] == "train"]["machine"].nunique() == 2
    if year == 2024:  # the _r2 archive, never the first version
        assert not any(p.endswith(f"eval_data_{m_eval}_train.zip") for p in server.requests)


@pytest.mark.parametrize("server", [2026], indirect=True)
def test_2026_fetches_what_is_published_and_names_the_rest(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="asd.download"):
        root = download(tmp_path / "data", base_url=server.url, year=2026, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "evaluation test record is not published yet" in lines[0]
    assert not any(p.endswith("/dev_ToyCar.zip") for p in server.requests)  # _r2 instead
    index = index_dataset(root)
    assert sorted(index["machine"].unique()) == ["ToyCar", "ToyDrone"]
    # the empty attribute part of the 2026 names reads as none
    assert set(index.loc[index["machine"] == "ToyDrone", "attributes"]) == {""}


@pytest.mark.parametrize("server", [2023], indirect=True)
def test_ground_truth_that_cannot_be_fetched_says_where_to_put_it(server, tmp_path):
    server.archives.clear()  # the evaluator's zip answers 404
    with pytest.raises(DownloadError) as err:
        download(
            tmp_path / "data", base_url=server.url, truth_url=server.url, year=2023, progress=False
        )
    message = str(err.value)
    assert "\n" not in message and "nttcslab/dcase2023_task2_evaluator" in message
    assert str(tmp_path / "data" / "eval_data" / "ground_truth_domain") in message
    assert (tmp_path / "data" / "dev_data" / "bearing" / "train").is_dir()  # the rest is there


@pytest.mark.parametrize("server", [2026], indirect=True)
def test_list_shows_the_published_files_of_the_configured_year(server, capsys):
    from asd.download import main

    assert main(["--list", "--base-url", server.url, "data.year=2026"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "19336329 dev_ToyCar_r2.zip 0.000 GB"  # the first version left out
    assert lines[-1].startswith("total 0.00 GB in 2 files")
