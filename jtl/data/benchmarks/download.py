"""Fetching a benchmark's published files: resumable HTTP, checksums, archive extraction.

- :func:`fetch` downloads one :class:`Remote` to a path: the bytes go to ``PATH.part``;
  a dropped connection resumes with an HTTP ``Range: bytes=<size of .part>-`` request
  (also in a later run: the ``.part`` file is kept); progress is a tqdm bar on stderr.
  The finished file's md5 or sha256 is compared with the publisher's: on a mismatch the
  file is removed and one line says so. Only then is ``.part`` renamed to ``PATH``.
- ``$JTL_DATA_MIRROR=http://host/base`` fetches ``<base>/<dataset>/<filename>`` instead of
  the publisher's URL (a local mirror of the archives; the tests serve one on 127.0.0.1).
- :func:`extract` unpacks ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` and ``.tar.bz2`` into
  a temporary directory beside the target and moves the top-level entries in only when the
  whole archive was read: an interrupted or damaged archive leaves nothing half-written.
  Single compressed files (``.gz``, ``.bz2``) and MATLAB ``.mat`` files are read where
  they lie by the dataset's reader.

Every failure a user can meet (offline, HTTP error, wrong checksum, damaged archive) is a
:class:`jtl.errors.DataError` with one line that names the file and where to put it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from jtl.errors import DataError

CHUNK = 1 << 20
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2")


@dataclasses.dataclass(frozen=True)
class Remote:
    """One published file: its URL (and ``mirrors`` tried in turn when the URL fails), its
    name on disk, the publisher's checksum (if any).

    ``provides``: paths (relative to the dataset root) that exist once the file is in place
    (extracted, for archives); the file is fetched only when one of them is missing.
    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``, or None where the publisher gives
    none (``note`` says so, and the docs list it).
    """

    url: str
    filename: str
    provides: tuple[str, ...]
    checksum: str | None = None
    note: str = ""
    mirrors: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith(ARCHIVES)


def source_urls(remote: Remote, dataset: str) -> tuple[str, ...]:
    """The publisher's URL and mirrors, or ``$JTL_DATA_MIRROR/<dataset>/<filename>``."""
    mirror = os.environ.get("JTL_DATA_MIRROR")
    return (f"{mirror.rstrip('/')}/{dataset}/{remote.filename}",) if mirror else (remote.url, *remote.mirrors)


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: Remote, dataset: str) -> None:
    """Compare ``path`` with the publisher's checksum; remove it and raise on a mismatch."""
    if remote.checksum is None:
        return
    algorithm, _, want = remote.checksum.partition(":")
    got = digest(path, algorithm)
    if got != want:
        path.unlink()
        raise DataError(f"{dataset}: {remote.filename} has {algorithm} {got}, the publisher's is {want}; "
                        f"the file was removed, run again to download it anew")


def fetch(remote: Remote, dataset: str, dest: Path, *, download: bool = True, attempts: int = 5,
          timeout: float = 60.0) -> Path:
    """``dest`` holding the verified file, downloaded (and resumed) when it is not there yet."""
    if dest.is_file():
        verify(dest, remote, dataset)
        return dest
    urls = source_urls(remote, dataset)
    where = f"download {urls[0]} yourself and put it at {dest}"
    if not download:
        raise DataError(f"{dataset}: {remote.filename} is missing and download=False; {where}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for k, url in enumerate(urls):
        try:
            _resume(url, part, attempts, timeout, remote.filename, dataset)
            break
        except urllib.error.HTTPError as e:
            failure = f"{url} answered HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            failure = f"cannot reach {url} ({e.reason})"
        if k == len(urls) - 1:
            raise DataError(f"{dataset}: {failure}; {where}")
    verify(part, remote, dataset)
    part.rename(dest)
    return dest


def _resume(url: str, part: Path, attempts: int, timeout: float, name: str, dataset: str) -> None:
    """Fetch ``url`` into ``part``, resuming after a dropped connection up to ``attempts`` times."""
    why = "connection closed early"
    for _ in range(attempts):
        try:
            if _transfer(url, part, timeout, name):
                return
        except urllib.error.URLError:
            raise
        except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            why = type(e).__name__
    have = part.stat().st_size if part.exists() else 0
    raise DataError(f"{dataset}: download of {url} broke off at {have} bytes ({why}); "
                    f"run again to resume from {part}")


def _transfer(url: str, part: Path, timeout: float, name: str) -> bool:
    """Append the rest of ``url`` to ``part``; True when the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: the .part file is already whole
            return True
        raise
    with response:
        if "text/html" in response.headers.get("Content-Type", "") and not name.endswith((".html", ".txt")):
            raise urllib.error.HTTPError(url, 200, "a web page instead of the file (a sign-in or confirmation "
                                         "page?)", response.headers, None)
        if have and response.status != 206:  # the server ignored Range: start again
            have = 0
        total = have + int(response.headers.get("Content-Length") or 0) or None
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=name, file=sys.stderr,
            disable=None, leave=False,
        ) as bar:
            while block := response.read(CHUNK):
                out.write(block)
                bar.update(len(block))
    return total is None or part.stat().st_size >= total


def extract(archive: Path, into: Path, dataset: str) -> None:
    """Unpack ``archive`` into ``into`` (all or nothing); a damaged archive is one DataError line."""
    staging = into / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                bad = z.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC for {bad}")
                z.extractall(staging)  # zipfile strips absolute paths and '..'
        else:
            with tarfile.open(archive, "r:*") as t:
                t.extractall(staging, filter="data")  # refuses links and paths outside `staging`
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        first = (str(e).splitlines() or [""])[0][:160]
        raise DataError(f"{dataset}: {archive} is not a readable archive ({type(e).__name__}: {first}); "
                        f"delete it and run again to download it anew") from None
    _merge(staging, into)
    shutil.rmtree(staging, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into the existing directory ``dst`` (archives that share a top folder)."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if target.is_dir() and entry.is_dir():
            _merge(entry, target)
        else:
            os.replace(entry, target)
