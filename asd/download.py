"""``make data``: fetch the DCASE 2021 Task 2 archives from Zenodo and unpack them into data.root.

Three records (DESIGN.md "The task and the data"):

- 4562016, development: ``dev_data_<machine>.zip`` ->
  ``dev_data/<machine>/{train,source_test,target_test}``
- 4660992, additional training: ``eval_data_train_<machine>.zip`` -> ``eval_data/<machine>/train``
- 4884786, evaluation test: ``eval_data_test_<machine>.zip`` ->
  ``eval_data/<machine>/{source_test,target_test}``

Each record's file list, sizes and MD5 checksums come from its JSON metadata
(``<base-url>/records/<id>``: ``files[*].key``, ``.size``, ``.checksum`` = "md5:...",
``.links.self``). Downloads go to ``<root>/.download/<name>.part`` and resume with an HTTP Range
request after an interruption; a finished file is checked against its MD5 before it gets its
final name. An archive is unpacked into a temporary folder inside the root, and its folders are
renamed into place only when the whole archive unpacked; ``.download/<name>.done`` then records
it as complete, and the archive is deleted (``--keep-archives`` keeps it). A second run skips
every archive with a ``.done`` marker. The machine folder is found inside the archive whatever
prefix it has (``fan/train/...`` or ``dev_data/fan/train/...``).

The base URL (default https://zenodo.org/api) comes from ``--base-url``, else the environment
variable ``ASD_ZENODO_URL``. Only urllib is used.
"""

from __future__ import annotations

from asd import AsdError

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://zenodo.org/api"
BASE_URL_ENV = "ASD_ZENODO_URL"
STATE = ".download"  # folder inside the root: .part files, archives and .done markers
CHUNK = 1 << 20
RETRIES = 3  # extra attempts per file after a broken connection; each resumes where it stopped
USER_AGENT = "asd-download/1 (DCASE 2021 Task 2 reproduction; urllib)"


class DownloadError(AsdError):
    """A record, download or archive that failed; the message names the file or URL."""


@dataclass(frozen=True)
class Record:
    """One Zenodo record of the data set and where its archives go."""

    record_id: int
    title: str
    dataset: str  # "dev_data" | "eval_data"
    pattern: str  # archive name -> machine, e.g. r"^dev_data_(?P<machine>.+)\.zip$"
    folders: tuple[str, ...]  # the machine sub-folders an archive of this record brings


RECORDS: tuple[Record, ...] = (
    Record(4562016, "development", "dev_data", r"^dev_data_(?P<machine>.+)\.zip$",
           ("train", "source_test", "target_test")),
    Record(4660992, "additional training", "eval_data", r"^eval_data_train_(?P<machine>.+)\.zip$",
           ("train",)),
    Record(4884786, "evaluation test", "eval_data", r"^eval_data_test_(?P<machine>.+)\.zip$",
           ("source_test", "target_test")),
)


@dataclass(frozen=True)
class RemoteFile:
    """One archive of a record."""

    record: Record
    key: str  # file name, e.g. "dev_data_fan.zip"
    machine: str
    url: str
    size: Optional[int]
    md5: str


# ----------------------------------------------------------------------------------------------
# HTTP


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs are fetched")


def _open(url: str, timeout: float, start: int = 0):
    _check_url(url)
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def record_files(record: Record, base_url: str, timeout: float = 60.0) -> list[RemoteFile]:
    """The archives of ``record`` from its JSON metadata (``<base_url>/records/<id>``)."""
    url = f"{base_url.rstrip('/')}/records/{record.record_id}"
    try:
        with _open(url, timeout) as resp:
            meta = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason} for the {record.title} record "
                            f"metadata") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot fetch the {record.title} record metadata: "
                            f"{getattr(err, 'reason', err)}") from None
    except ValueError as err:
        raise DownloadError(f"{url}: the record metadata is not JSON ({err})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if isinstance(files, dict):  # InvenioRDM's files endpoint shape: {"entries": [...]}
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list) or not files:
        raise DownloadError(f"{url}: no 'files' list in the record metadata")
    out = []
    for entry in files:
        try:
            key = entry["key"]
            checksum = entry["checksum"]
            links = entry.get("links") or {}
        except (KeyError, TypeError):
            raise DownloadError(f"{url}: a file entry without 'key'/'checksum': "
                                f"{entry!r}") from None
        m = re.match(record.pattern, key)
        if m is None:
            log.info("%s: skipping %s (not a machine archive)", url, key)
            continue
        algo, _, digest = str(checksum).partition(":")
        if algo.lower() != "md5" or not re.fullmatch(r"[0-9a-fA-F]{32}", digest):
            raise DownloadError(f"{url}: {key}: expected an 'md5:<32 hex>' checksum, got "
                                f"{checksum!r}")
        link = (links.get("self") or links.get("content") or links.get("download")
                or f"{base_url.rstrip('/')}/records/{record.record_id}/files/{key}/content")
        size = entry.get("size", entry.get("filesize"))
        out.append(RemoteFile(record=record, key=key, machine=m["machine"], url=link,
                              size=int(size) if size is not None else None,
                              md5=digest.lower()))
    if not out:
        raise DownloadError(f"{url}: no archive matches {record.pattern} in the record")
    return out


def _md5_of(path: Path) -> "hashlib._Hash":
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h


def fetch(remote: RemoteFile, dest: Path, progress: bool = True, timeout: float = 60.0,
          retries: int = RETRIES) -> Path:
    """Download ``remote`` to ``dest`` via ``dest.part`` with resume; verify size and MD5.

    A broken transfer is resumed with a Range request (at most ``retries`` more times); a server
    that ignores Range (HTTP 200) restarts the file. A wrong checksum deletes the download and
    raises DownloadError naming the file.
    """
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and remote.size is not None and part.stat().st_size > remote.size:
        part.unlink()  # longer than the file: not ours to resume
    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if remote.size is not None and start == remote.size:
            break
        try:
            with _open(remote.url, timeout, start) as resp:
                if start and resp.status != 206:  # Range ignored: whole file again
                    start = 0
                mode = "ab" if start else "wb"
                total = remote.size
                with open(part, mode) as out, tqdm(total=total, initial=start, unit="B",
                                                   unit_scale=True, unit_divisor=1024,
                                                   desc=remote.key, disable=not progress) as bar:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            if remote.size is None or part.stat().st_size >= remote.size:
                break
            raise ConnectionError("the server closed the connection early")
        except urllib.error.HTTPError as err:
            transient = err.code >= 500 or (err.code == 416 and start)  # 416: .part does not fit
            if transient and attempt < retries:
                attempt += 1
                if err.code == 416:
                    part.unlink()
                log.warning("%s: HTTP %d; trying again (attempt %d of %d)", remote.key, err.code,
                            attempt + 1, retries + 1)
                time.sleep(0.2 * attempt)
                continue
            raise DownloadError(f"{remote.url}: HTTP {err.code} {err.reason} while downloading "
                                f"{remote.key}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            # a broken transfer (reset, timeout, IncompleteRead, early close): resume it
            attempt += 1
            reason = getattr(err, "reason", None) or repr(err)
            if attempt > retries:
                raise DownloadError(f"{remote.url}: downloading {remote.key} failed after "
                                    f"{retries + 1} attempts ({reason}); run again to resume "
                                    f"from {part}") from None
            log.warning("%s: %s; resuming (attempt %d of %d)", remote.key, reason, attempt + 1,
                        retries + 1)
            time.sleep(0.2 * attempt)
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise DownloadError(f"{remote.key}: downloaded {size} bytes, the record says "
                            f"{remote.size}; removed it, run again")
    digest = _md5_of(part).hexdigest()
    if digest != remote.md5:
        part.unlink()
        raise DownloadError(f"{remote.key}: MD5 checksum mismatch (got {digest}, the record says "
                            f"{remote.md5}); the download was removed, run again")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------
# Unpacking


def _find_machine_dir(tree: Path, machine: str, folders: Sequence[str]) -> Path:
    """The folder inside an unpacked archive that holds the machine's sub-folders."""
    candidates = [tree] + [p for p in sorted(tree.rglob("*")) if p.is_dir()
                           and len(p.relative_to(tree).parts) <= 3]
    holding = [p for p in candidates if any((p / f).is_dir() for f in folders)]
    named = [p for p in holding if p.name == machine]
    if named:
        return named[0]
    if len(holding) == 1:
        return holding[0]
    raise DownloadError(f"expected a {machine}/ folder holding {', '.join(folders)} in the "
                        f"archive, found {[str(p.relative_to(tree)) for p in holding] or 'none'}")


def unpack(archive: Path, remote: RemoteFile, root: Path) -> list[Path]:
    """Unpack ``archive`` into ``root/<dataset>/<machine>/<folder>``; nothing half-done stays.

    Extracts into a temporary folder inside ``root`` (same file system, so the final moves are
    renames), then replaces each of the archive's folders at once.
    """
    target = root / remote.record.dataset / remote.machine
    tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{remote.key}-", dir=root))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    parts = Path(name).parts
                    if name.startswith(("/", "\\")) or ".." in parts:
                        raise DownloadError(f"{archive}: unsafe member path {name!r}")
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{archive}: member {bad} is corrupt (CRC mismatch)")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
            raise DownloadError(f"{archive}: cannot unpack {remote.key}: {err}") from None
        machine_dir = _find_machine_dir(tmp, remote.machine, remote.record.folders)
        found = [f for f in remote.record.folders if (machine_dir / f).is_dir()]
        missing = [f for f in remote.record.folders if f not in found]
        if missing:
            raise DownloadError(f"{archive}: {remote.key} has no {', '.join(missing)} folder "
                                f"for {remote.machine}; expected "
                                f"{', '.join(remote.record.folders)}")
        target.mkdir(parents=True, exist_ok=True)
        placed = []
        for f in found:
            final = target / f
            if final.exists():  # left by an earlier run that stopped before its marker
                shutil.rmtree(final)
            os.replace(machine_dir / f, final)
            placed.append(final)
        return placed
    except DownloadError as err:
        raise DownloadError(f"{err} (nothing was unpacked into {target})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The whole data set


def resolve_base_url(base_url: Optional[str] = None) -> str:
    """``base_url``, else $ASD_ZENODO_URL, else https://zenodo.org/api."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def download(root: str | Path, base_url: Optional[str] = None,
             records: Iterable[Record] = RECORDS, machines: Optional[Sequence[str]] = None,
             progress: bool = True, keep_archives: bool = False, timeout: float = 60.0) -> Path:
    """Fetch, verify and unpack every archive of ``records`` into ``root``; skip finished ones.

    ``machines`` limits the archives to those machine types. Returns ``root``.
    """
    root = Path(root)
    base_url = resolve_base_url(base_url)
    state = root / STATE
    state.mkdir(parents=True, exist_ok=True)
    for record in records:
        remotes = record_files(record, base_url, timeout)
        if machines is not None:
            remotes = [r for r in remotes if r.machine in machines]
        for remote in remotes:
            marker = state / f"{remote.key}.done"
            if marker.is_file() and json.loads(marker.read_text()).get("md5") == remote.md5:
                log.info("%s: already unpacked, skipping", remote.key)
                continue
            archive = state / remote.key
            if not (archive.is_file() and _md5_of(archive).hexdigest() == remote.md5):
                archive.unlink(missing_ok=True)
                fetch(remote, archive, progress=progress, timeout=timeout)
            placed = unpack(archive, remote, root)
            from asd.io import atomic_write_text

            atomic_write_text(marker, json.dumps({
                "record": record.record_id, "key": remote.key, "md5": remote.md5,
                "folders": [str(p.relative_to(root)) for p in placed]}) + "\n")
            if not keep_archives:
                archive.unlink()
            log.info("%s: unpacked into %s", remote.key, root / record.dataset / remote.machine)
    return root


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m asd.download [--config C] [--base-url URL] [key.sub=value ...]``."""
    import argparse

    from asd.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m asd.download",
                                     description="Download and unpack the DCASE 2021 Task 2 data "
                                                 "into data.root; prints the root as last line.")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--config", default="config.yml", help="config file (default: config.yml)")
    parser.add_argument("--root", default=None, help="data root (default: data.root of the config)")
    parser.add_argument("--base-url", default=None,
                        help=f"Zenodo API root (default: ${BASE_URL_ENV} or {DEFAULT_BASE_URL})")
    parser.add_argument("--machines", default=None,
                        help="comma-separated machine types (default: all in the records)")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the zip files in <root>/.download after unpacking")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ns.config, ns.overrides)
        root = download(ns.root or cfg.data.root, base_url=ns.base_url,
                        machines=ns.machines.split(",") if ns.machines else None,
                        keep_archives=ns.keep_archives)
    except (ConfigError, DownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
