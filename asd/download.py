"""``make data``: fetch the DCASE 2021 Task 2 data from Zenodo and unpack it into data.root.

``RECORDS``: development, additional training and evaluation test archives per machine, and the
official evaluator's 42 ground-truth CSVs (DESIGN.md "Scale"), listed with names, sizes and MD5s
at ``<base-url>/records/<id>``. pooch fetches, verifies and unzips each file, resuming
``.download/<name>.part`` (HTTP Range); only the machine's folders leave the unpacked tree.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pooch
import requests
from tqdm import tqdm

from asd import AsdError
from asd.infra.cli import load_args_config, make_parser, names_argument, run_command
from asd.infra.data import GROUND_TRUTH

DEFAULT_BASE_URL = "https://zenodo.org/api"
BASE_URL_ENV = "ASD_ZENODO_URL"
STATE = ".download"  # folder inside the root: .part files, archives and .done markers
_M = r"(?P<machine>[A-Za-z0-9]+)"
# the machine types of the records (--machines takes these, and says which is meant otherwise)
MACHINES = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
_TRUTH = r"ground_truth_(?P<machine>.+)_section_\d{2}_(source|target)_test\.csv"


class DownloadError(AsdError):
    """A record, download or archive that failed; the message names the file or URL."""


# A Zenodo record: the file names to take (group "machine"; eval names in either word order) and
# where they go: ``dataset/<machine>/<folders>``, or the CSVs into ``dataset`` (no folders).
Record = collections.namedtuple("Record", "record_id title names dataset folders")
RemoteFile = collections.namedtuple("RemoteFile", "record key machine url size md5")
_TESTS = ("source_test", "target_test")
RECORDS = (
    Record(4562016, "development", (rf"dev_data_{_M}\.zip",), "dev_data", ("train", *_TESTS)),
    Record(
        4660992,
        "additional training",
        (rf"eval_data_{_M}_train\.zip", rf"eval_data_train_{_M}\.zip"),
        "eval_data",
        ("train",),
    ),
    Record(
        4884786,
        "evaluation test",
        (rf"eval_data_{_M}_test\.zip", rf"eval_data_test_{_M}\.zip"),
        "eval_data",
        _TESTS,
    ),
    Record(5257674, "eval ground truth", (r".+\.zip", _TRUTH), f"eval_data/{GROUND_TRUTH}", ()),
)


def record_files(
    record: Record, base_url: str | None, machines: Sequence[str] | None, timeout: float = 60.0
) -> list[RemoteFile]:
    """The files of ``record`` whose names it takes (of ``machines``; None: all), from
    ``<base_url>/records/<id>`` (None: ``$ASD_ZENODO_URL``, else Zenodo)."""
    base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = f"{base_url.rstrip('/')}/records/{record.record_id}"
    try:
        resp = requests.get(url, timeout=timeout)
        resp.raise_for_status()
        out = []
        for entry in resp.json()["files"]:
            key = entry["key"]
            if match := next(filter(None, (re.fullmatch(n, key) for n in record.names)), None):
                link = (entry.get("links") or {}).get("self") or f"{url}/files/{key}/content"
                md5 = re.sub(r"^md5:", "", entry["checksum"], flags=re.I).lower()  # or bare hex
                out.append(
                    RemoteFile(
                        record, key, match.groupdict().get("machine"), link, int(entry["size"]), md5
                    )
                )
    except requests.RequestException as err:
        raise DownloadError(f"{url}: cannot fetch the {record.title} record: {err}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DownloadError(f"{url}: not a records API answer ({err!r})") from None
    if not out:
        raise DownloadError(f"{url}: no file of the {record.title} record has the expected name")
    return [f for f in out if machines is None or f.machine in (None, *machines)]


def resuming_downloader(part: Path, size: int, progress: bool, timeout: float):
    """A pooch downloader that keeps ``part`` between attempts and runs and resumes it with an
    HTTP Range request; a server that ignores Range (status 200) restarts it."""

    def fetch(url: str, output_file: str, _pooch) -> None:
        start = part.stat().st_size if part.exists() else 0
        if start != size:
            start = start if start < size else 0  # longer than the file: not a piece of it
            headers = {"Range": f"bytes={start}-"} if start else {}
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                resp.raise_for_status()
                start = start if resp.status_code == 206 else 0
                with (
                    open(part, "ab" if start else "wb") as out,
                    tqdm(
                        total=size,
                        initial=start,
                        unit="B",
                        unit_scale=True,
                        desc=part.stem,
                        disable=not progress,
                    ) as bar,
                ):
                    for block in resp.iter_content(1 << 20):
                        bar.update(out.write(block))
        os.replace(part, output_file)  # pooch checks the MD5, then gives it its name

    return fetch


def place(found: Path, remote: RemoteFile, root: Path, machines: Sequence[str] | None):
    """Move the machine's folders, or the ground-truth CSVs, found in ``found`` into ``root``."""
    rec, target = remote.record, root / remote.record.dataset
    if rec.folders:
        tops = [
            d
            for d in [found / remote.machine, *found.glob(f"*/{remote.machine}")]
            if "__MACOSX" not in d.parts and all((d / f).is_dir() for f in rec.folders)
        ]
        if not tops:
            raise DownloadError(
                f"{remote.key}: expected a {remote.machine}/ folder holding "
                f"{', '.join(rec.folders)}; nothing was unpacked"
            )
        moves = {tops[0] / f: target / remote.machine / f for f in rec.folders}
    else:  # ground truth: every matching CSV, wherever the zip keeps it
        files = [found] if found.is_file() else sorted(found.rglob("ground_truth_*.csv"))
        names = [(f, re.fullmatch(_TRUTH, f.name)) for f in files if "__MACOSX" not in f.parts]
        moves = {
            f: target / f.name
            for f, m in names
            if m and (machines is None or m["machine"] in machines)
        }
        if not moves:
            raise DownloadError(f"{remote.key}: holds no {_TRUTH} file")
    for found, to in moves.items():
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(to, ignore_errors=True)  # a folder from a stopped run
        shutil.move(found, to)


def fetch(
    remote: RemoteFile,
    root: Path,
    machines: Sequence[str] | None,
    keep_archives: bool,
    progress: bool,
    timeout: float,
    retries: int,
) -> None:
    """Fetch, verify and unpack one file of a record into ``root``, then mark it done."""
    state, rec = root / STATE, remote.record
    store = pooch.create(
        state,
        "",
        registry={remote.key: f"md5:{remote.md5}"},
        urls={remote.key: remote.url},
        retry_if_failed=retries,
    )
    get = resuming_downloader(state / f"{remote.key}.part", remote.size, progress, timeout)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root) as tree:
        unzip = pooch.Unzip(extract_dir=tree) if remote.key.endswith(".zip") else None
        try:
            got = store.fetch(remote.key, processor=unzip, downloader=get)
        except (requests.RequestException, ValueError) as err:  # ValueError: MD5 mismatch
            raise DownloadError(f"{remote.key}: {err}") from None
        except (zipfile.BadZipFile, EOFError) as err:
            raise DownloadError(f"{remote.key}: cannot unpack: {err}") from None
        place(Path(tree if unzip else got), remote, root, machines)
    if machines is None or remote.machine is not None:  # not a ground truth cut to --machines
        (state / f"{remote.key}.done").write_text(remote.md5 + "\n")
    if not keep_archives:
        (state / remote.key).unlink(missing_ok=True)
    logging.getLogger(__name__).info("%s: in place under %s", remote.key, root / rec.dataset)


def download(
    root: str | Path,
    base_url: str | None = None,
    machines: Sequence[str] | None = None,
    keep_archives: bool = False,
    records: Sequence[Record] = RECORDS,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Fetch, verify and unpack every file of ``records`` into ``root``; skip finished ones."""
    root = Path(root)
    (root / STATE).mkdir(parents=True, exist_ok=True)
    for record in records:
        try:
            for remote in record_files(record, base_url, machines, timeout):
                done = root / STATE / f"{remote.key}.done"
                if not (done.is_file() and done.read_text().strip() == remote.md5):
                    fetch(remote, root, machines, keep_archives, progress, timeout, retries)
        except DownloadError as err:
            if record.folders:
                raise
            raise DownloadError(
                f"{record.title} (record {record.record_id}) could not be fetched "
                f"({err}); put its CSVs in {root / record.dataset}"
            ) from None
    return root


def main(argv: list[str] | None = None) -> int:
    p = make_parser("asd.download", __doc__)
    p.add_argument("--root", default=None, help="data root (default: data.root of the config)")
    p.add_argument(
        "--base-url",
        default=None,
        help=f"records API base, <URL>/records/<id> "
        f"(default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    p.add_argument(
        "--machines",
        type=names_argument(MACHINES),
        default=None,
        help=f"comma-separated machine types of {', '.join(MACHINES)} (default: all)",
    )
    p.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep the zip files in <root>/.download after unpacking",
    )
    p.add_argument("--list", action="store_true", help="print the files and their sizes only")

    def run(args):
        machines = list(args.machines) if args.machines else None
        if args.list:  # what `make data` would fetch, from the records' own metadata
            files = [f for r in RECORDS for f in record_files(r, args.base_url, machines)]
            for f in files:
                print(f"{f.record.record_id} {f.key} {f.size / 1e9:.3f} GB")
            return print(f"total {sum(f.size for f in files) / 1e9:.2f} GB in {len(files)} files")
        print(
            download(
                args.root or load_args_config(args).data.root,
                base_url=args.base_url,
                machines=machines,
                keep_archives=args.keep_archives,
            )
        )

    return run_command(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
