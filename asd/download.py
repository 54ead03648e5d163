"""``make data``: fetch one DCASE year's Task 2 data from Zenodo and unpack it into data.root.

``YEARS[data.year]`` (2021-2026, docs/data.md): development, additional training and
evaluation test archives per machine, listed with names, sizes and MD5s at
``<base-url>/records/<id>``. pooch fetches, verifies and unzips each file, resuming
``.download/<name>.part`` (HTTP Range); only the machine's folders (and 2022+
``attributes_XX.csv``) leave the unpacked tree. The evaluation ground truth: 2021 the official
evaluator's 42 CSVs (a Zenodo record); 2022-2025 the ``ground_truth_data/`` and
``ground_truth_domain/`` CSVs of the year's evaluator repository, fetched as one zip from
``<truth-url>/<owner>/<repo>/archive/refs/heads/main.zip`` (``--truth-url``, ``$ASD_TRUTH_URL``,
else GitHub), or put there by hand (docs/data.md). A record not yet published (2026's
evaluation test set) is named in one line after the rest is fetched.
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
from asd.infra.cli import (
    load_args_config,
    make_parser,
    names_argument,
    run_command,
    unknown_names,
)
from asd.infra.data import GROUND_TRUTH, GROUND_TRUTH_DOMAIN
from asd.infra.io import atomic_path

DEFAULT_BASE_URL = "https://zenodo.org/api"
BASE_URL_ENV = "ASD_ZENODO_URL"
DEFAULT_TRUTH_URL = "https://github.com"
TRUTH_URL_ENV = "ASD_TRUTH_URL"
# The folder inside the root for .part files, archives and .done markers.
STATE = ".download"
# A machine type in an archive's name.
_M = r"(?P<machine>[A-Za-z0-9]+)"
# 2021's ground truth: one CSV per section and domain.
_TRUTH = r"ground_truth_(?P<machine>.+)_section_\d{2}_(source|target)_test\.csv"
# 2022 on: one CSV per section.
_TRUTH_2022 = r"ground_truth_(?P<machine>.+)_section_\d{2}_test\.csv"


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
# The split folders from 2022 on.
_LATER = ("train", "test")


def _later_records(dev: int | None, train: int | None, test: int | None) -> tuple[Record, ...]:
    """The three records of a year after 2021 (None: not yet published); a machine's newer
    archive (``_r2``) stands for its first one."""
    r2 = r"(?:_r2)?"
    return (
        Record(dev, "development", (rf"dev_{_M}{r2}\.zip",), "dev_data", _LATER),
        Record(
            train,
            "additional training",
            (rf"eval_data_{_M}_train{r2}\.zip",),
            "eval_data",
            ("train",),
        ),
        Record(
            test, "evaluation test", (rf"eval_data_{_M}_test{r2}\.zip",), "eval_data", ("test",)
        ),
    )


# The machine types of each year, development and evaluation (docs/data.md): --machines takes
# these, and says which is meant otherwise.
_DEV_2021 = ("fan", "gearbox", "pump", "slider", "ToyCar", "ToyTrain", "valve")
_DEV_2022 = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")
_EVAL_2023 = ("bandsaw", "grinder", "shaker", "ToyDrone", "ToyNscale", "ToyTank", "Vacuum")
_EVAL_2024 = (
    "3DPrinter",
    "AirCompressor",
    "BrushlessMotor",
    "HairDryer",
    "HoveringDrone",
    "RoboticArm",
    "Scanner",
    "ToothBrush",
    "ToyCircuit",
)
_EVAL_2025 = (
    "AutoTrash",
    "BandSealer",
    "CoffeeGrinder",
    "HomeCamera",
    "Polisher",
    "ScrewFeeder",
    "ToyPet",
    "ToyRCCar",
)
_DEV_2026 = ("ToyCar", "ToyCarEmu", "bearingEmu", "fan", "gearboxEmu", "sliderEmu", "valveEmu")
_EVAL_2026 = ("ToyDrone", "ToothBrush", "SewingMachine", "BlowerDustCollector", "Sander")

# One year's records, the repository of its official evaluator (eval ground truth; None: the
# 2021 truth is a Zenodo record among the records, 2026's is not published) and its machines.
Year = collections.namedtuple("Year", "records evaluator machines")
YEARS = {
    2021: Year(RECORDS, None, _DEV_2021),
    2022: Year(
        _later_records(6355122, 6462969, 6586456), "Kota-Dohi/dcase2022_evaluator", _DEV_2022
    ),
    2023: Year(
        _later_records(7882613, 7830345, 7860847),
        "nttcslab/dcase2023_task2_evaluator",
        _DEV_2022 + _EVAL_2023,
    ),
    2024: Year(
        _later_records(10902294, 11259435, 11363076),
        "nttcslab/dcase2024_task2_evaluator",
        _DEV_2022 + _EVAL_2024,
    ),
    2025: Year(
        _later_records(15097779, 15392814, 15519362),
        "nttcslab/dcase2025_task2_evaluator",
        _DEV_2022 + _EVAL_2025,
    ),
    2026: Year(_later_records(19336329, 20151556, None), None, _DEV_2026 + _EVAL_2026),
}
# Every machine type of any year: what --machines accepts before the year is known.
MACHINES = tuple(sorted({m for year in YEARS.values() for m in year.machines}, key=str.lower))


def record_files(
    record: Record, base_url: str | None, machines: Sequence[str] | None, timeout: float = 60.0
) -> list[RemoteFile]:
    """The files of ``record`` whose names it takes (of ``machines``; None: all), from
    ``<base_url>/records/<id>`` (None: ``$ASD_ZENODO_URL``, else Zenodo)."""
    base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = f"{base_url.rstrip('/')}/records/{record.record_id}"
    # A network failure and an answer of another shape are told apart in the message.
    try:
        resp = requests.get(url, timeout=timeout)
        resp.raise_for_status()
        out = []
        for entry in resp.json()["files"]:
            key = entry["key"]
            # The first of the record's name patterns that matches, if any.
            match = next(filter(None, (re.fullmatch(n, key) for n in record.names)), None)
            if match:
                # Zenodo's answer names the download link; a mirror may leave it out.
                link = (entry.get("links") or {}).get("self") or f"{url}/files/{key}/content"
                # Zenodo writes "md5:<hex>"; a mirror may give the bare hex.
                md5 = re.sub(r"^md5:", "", entry["checksum"], flags=re.I).lower()
                machine = match.groupdict().get("machine")
                size = int(entry["size"])
                out.append(RemoteFile(record, key, machine, link, size, md5))
    except requests.RequestException as err:
        raise DownloadError(f"{url}: cannot fetch the {record.title} record: {err}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DownloadError(f"{url}: not a records API answer ({err!r})") from None
    if not out:
        raise DownloadError(f"{url}: no file of the {record.title} record has the expected name")
    # A machine's newer archive (_r2) replaces its first one.
    newer = {f.machine for f in out if f.machine and "_r2." in f.key}
    out = [f for f in out if f.machine not in newer or "_r2." in f.key]
    return [f for f in out if machines is None or f.machine in (None, *machines)]


def resuming_downloader(part: Path, size: int, progress: bool, timeout: float):
    """A pooch downloader that keeps ``part`` between attempts and runs and resumes it with an
    HTTP Range request; a server that ignores Range (status 200) restarts it."""

    def fetch(url: str, output_file: str, _pooch) -> None:
        start = part.stat().st_size if part.exists() else 0
        # A complete .part is only renamed: pooch checks its MD5.
        if start != size:
            # Longer than the file: not a piece of it, so start again.
            start = start if start < size else 0
            headers = {"Range": f"bytes={start}-"} if start else {}
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                resp.raise_for_status()
                # 206: the server sent the rest; 200: it ignored Range and sends the whole file.
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
        # pooch checks the MD5, then gives the file its name.
        os.replace(part, output_file)

    return fetch


def place(found: Path, remote: RemoteFile, root: Path, machines: Sequence[str] | None):
    """Move the machine's folders, or the ground-truth CSVs, found in ``found`` into ``root``."""
    rec = remote.record
    target = root / remote.record.dataset
    if rec.folders:
        # Archives keep the machine's folder at the top or one level down; macOS's resource
        # copies are no data.
        candidates = [found / remote.machine, *found.glob(f"*/{remote.machine}")]
        tops = [
            d
            for d in candidates
            if "__MACOSX" not in d.parts and all((d / f).is_dir() for f in rec.folders)
        ]
        if not tops:
            raise DownloadError(
                f"{remote.key}: expected a {remote.machine}/ folder holding "
                f"{', '.join(rec.folders)}; nothing was unpacked"
            )
        moves = {tops[0] / f: target / remote.machine / f for f in rec.folders}
        # 2022 on: the attributes files beside the split folders.
        for beside in sorted(tops[0].glob("attributes_*.csv")):
            moves[beside] = target / remote.machine / beside.name
    # Ground truth: every matching CSV, wherever the zip keeps it.
    else:
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
        # A folder left by a stopped run is replaced, not merged.
        shutil.rmtree(to, ignore_errors=True)
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
    state = root / STATE
    rec = remote.record
    # pooch knows the file by its MD5, so a damaged download is never unpacked.
    store = pooch.create(
        state,
        "",
        registry={remote.key: f"md5:{remote.md5}"},
        urls={remote.key: remote.url},
        retry_if_failed=retries,
    )
    get = resuming_downloader(state / f"{remote.key}.part", remote.size, progress, timeout)
    # Unpacked beside the data, on the same file system, so the moves are renames.
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root) as tree:
        unzip = pooch.Unzip(extract_dir=tree) if remote.key.endswith(".zip") else None
        try:
            got = store.fetch(remote.key, processor=unzip, downloader=get)
        # pooch raises ValueError for an MD5 mismatch.
        except (requests.RequestException, ValueError) as err:
            raise DownloadError(f"{remote.key}: {err}") from None
        except (zipfile.BadZipFile, EOFError) as err:
            raise DownloadError(f"{remote.key}: cannot unpack: {err}") from None
        place(Path(tree if unzip else got), remote, root, machines)
    # A ground truth cut to --machines is not done: a later run for all machines needs it whole.
    if machines is None or remote.machine is not None:
        (state / f"{remote.key}.done").write_text(remote.md5 + "\n")
    if not keep_archives:
        (state / remote.key).unlink(missing_ok=True)
    logging.getLogger(__name__).info("%s: in place under %s", remote.key, root / rec.dataset)


def fetch_truth(
    repo: str,
    root: Path,
    machines: Sequence[str] | None,
    truth_url: str | None,
    timeout: float,
) -> None:
    """Fetch the evaluator repository ``repo`` as a zip and put its ``ground_truth_data/`` and
    ``ground_truth_domain/`` CSVs (of ``machines``) into ``root/eval_data``; DownloadError with
    the manual step where that fails."""
    base = truth_url or os.environ.get(TRUTH_URL_ENV) or DEFAULT_TRUTH_URL
    url = f"{base.rstrip('/')}/{repo}/archive/refs/heads/main.zip"
    folders = {"ground_truth_data": GROUND_TRUTH, "ground_truth_domain": GROUND_TRUTH_DOMAIN}
    manual = (
        f"put the ground_truth_data/*.csv of https://github.com/{repo} into "
        f"{root / 'eval_data' / GROUND_TRUTH} and its ground_truth_domain/*.csv into "
        f"{root / 'eval_data' / GROUND_TRUTH_DOMAIN}"
    )
    archive = root / STATE / f"{repo.replace('/', '+')}.zip"
    # Every failure ends in the same advice: the manual step.
    try:
        with requests.get(url, stream=True, timeout=timeout) as resp:
            resp.raise_for_status()
            with atomic_path(archive) as tmp, open(tmp, "wb") as out:
                for block in resp.iter_content(1 << 20):
                    out.write(block)
        with tempfile.TemporaryDirectory(prefix=".unpack-", dir=root) as tree:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tree)
            # The repository holds more than the truth; only its CSVs of --machines move.
            moves = {
                f: root / "eval_data" / dest / f.name
                for sub, dest in folders.items()
                for f in sorted(Path(tree).rglob(f"{sub}/ground_truth_*.csv"))
                if "__MACOSX" not in f.parts
                and (m := re.fullmatch(_TRUTH_2022, f.name))
                and (machines is None or m["machine"] in machines)
            }
            # The labels are what evaluation needs; the domains alone are not enough.
            if not any(to.parent.name == GROUND_TRUTH for to in moves.values()):
                raise DownloadError(f"{url}: holds no ground_truth_data/{_TRUTH_2022}; {manual}")
            for found, to in moves.items():
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(found, to)
    except (requests.RequestException, zipfile.BadZipFile, OSError) as err:
        raise DownloadError(
            f"eval ground truth: {url} could not be fetched ({err}); {manual}"
        ) from None
    # The archive is fetched again each time, so it is never kept.
    finally:
        archive.unlink(missing_ok=True)
    log = logging.getLogger(__name__)
    log.info("%s: ground truth in place under %s", repo, root / "eval_data")


def download(
    root: str | Path,
    base_url: str | None = None,
    machines: Sequence[str] | None = None,
    keep_archives: bool = False,
    records: Sequence[Record] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    year: int = 2021,
    truth_url: str | None = None,
) -> Path:
    """Fetch, verify and unpack every file of ``records`` (None: those of ``year``, and its
    evaluator's ground truth) into ``root``; skip finished ones. A record not yet published
    is named in one warning at the end."""
    root = Path(root)
    if year not in YEARS:
        raise DownloadError(f"data.year {year}: expected one of {', '.join(map(str, YEARS))}")
    # Records given by the caller come without the year's evaluator ground truth.
    evaluator = YEARS[year].evaluator if records is None else None
    records = YEARS[year].records if records is None else records
    (root / STATE).mkdir(parents=True, exist_ok=True)
    unpublished = [r for r in records if r.record_id is None]
    for record in records:
        if record.record_id is None:
            continue
        try:
            for remote in record_files(record, base_url, machines, timeout):
                # A file done with the same MD5 is skipped; a changed one is fetched again.
                done = root / STATE / f"{remote.key}.done"
                if not (done.is_file() and done.read_text().strip() == remote.md5):
                    fetch(remote, root, machines, keep_archives, progress, timeout, retries)
        # The 2021 ground truth can be put there by hand; say how.
        except DownloadError as err:
            if record.folders:
                raise
            raise DownloadError(
                f"{record.title} (record {record.record_id}) could not be fetched "
                f"({err}); put its CSVs in {root / record.dataset}"
            ) from None
    if evaluator is not None:
        fetch_truth(evaluator, root, machines, truth_url, timeout)
    if unpublished:
        logging.getLogger(__name__).warning(
            "%d: the %s record is not published yet (not in the organisers' lists); the rest "
            "is in %s, run `make data` again once it is",
            year,
            " and ".join(r.title for r in unpublished),
            root,
        )
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
        help="comma-separated machine types of data.year (default: all)",
    )
    p.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep the zip files in <root>/.download after unpacking",
    )
    p.add_argument("--list", action="store_true", help="print the files and their sizes only")
    p.add_argument(
        "--year",
        type=int,
        default=None,
        choices=sorted(YEARS),
        help="the DCASE year to fetch (default: data.year of the config)",
    )
    p.add_argument(
        "--truth-url",
        default=None,
        help=f"where the evaluators' repositories are, <URL>/<owner>/<repo>/archive/refs/heads/"
        f"main.zip (default: ${TRUTH_URL_ENV}, else {DEFAULT_TRUTH_URL})",
    )

    def run(args):
        machines = list(args.machines) if args.machines else None
        year = args.year or load_args_config(args).data.year
        # --machines accepted any year's names; now the year is known, check them against it.
        if machines:
            message = unknown_names(machines, YEARS[year].machines, f"{year} machine type")
            if message:
                raise DownloadError(message)
        published = [r for r in YEARS[year].records if r.record_id is not None]
        # What `make data` would fetch, from the records' own metadata.
        if args.list:
            files = [f for r in published for f in record_files(r, args.base_url, machines)]
            for f in files:
                print(f"{f.record.record_id} {f.key} {f.size / 1e9:.3f} GB")
            print(f"total {sum(f.size for f in files) / 1e9:.2f} GB in {len(files)} files")
            return
        print(
            download(
                args.root or load_args_config(args).data.root,
                base_url=args.base_url,
                machines=machines,
                keep_archives=args.keep_archives,
                year=year,
                truth_url=args.truth_url,
            )
        )

    return run_command(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
