"""Outputs as transactions: files and folders written whole or not at all, CSV rows appended, content hashes.

Reads and writes only what its callers name. Every writer of the project goes through here:
- `atomic_write(path, write)`: one file, written to a private temporary sibling, then renamed.
- `publish_folder(tmp, dest)`: a whole folder (a variant, the prepared data, an asset) written into
  `private_temporary(dest)` and swapped in with two renames; a kill between them leaves `.NAME.old-*`,
  which the next writer of `dest` puts back (`recover(dest)`), so a reader sees the old set or the new one.
- `publish_file_set(staged, record)`: several files that belong together at fixed paths (a results set)
  renamed into place from a private staging folder, then a generation record naming each file's sha256
  written last; `file_set_problems(record)` tells a reader whether the files on disk are that set.
Temporary names are `.NAME.<kind>-HOST-PID-RANDOM` (kind tmp: being written, old: being replaced): private
to their process, and judged stale once that process is gone (or after STALE_TEMPORARY_HOURS).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fincompress.common.paths import FinCompressError

log = logging.getLogger("fincompress.io")

# A temporary whose owner cannot be checked (another host, a reused pid) is stale after this long;
# writing a variant or the data takes seconds to minutes.
STALE_TEMPORARY_HOURS = 6.0
_TEMPORARY = r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[0-9a-f]{8}"


# ----------------------------------------------------------------------------- private temporaries

def host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def private_temporary(dest: Path, kind: str = "tmp") -> Path:
    """A hidden sibling `.NAME.<kind>-HOST-PID-RANDOM` of `dest` (same filesystem: the rename is atomic)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.{kind}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temporary_sibling(path: Path) -> Path:
    """A private temporary file name beside `path` (see `private_temporary`)."""
    return private_temporary(path, "tmp")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but belongs to someone else (or cannot be asked): assume alive
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """A temporary whose process is gone (this host), or older than STALE_TEMPORARY_HOURS."""
    match = re.fullmatch(_TEMPORARY, Path(path).name)
    if match is None:
        return False
    try:
        # ctime: changed by the rename that made an `.old-*` folder (its mtime can be days old)
        stat = Path(path).lstat()
        age_hours = ((now or time.time()) - max(stat.st_mtime, stat.st_ctime)) / 3600
    except FileNotFoundError:
        return False
    if age_hours > STALE_TEMPORARY_HOURS:
        return True
    if match["pid"] and match["host"] == host_tag():
        return int(match["pid"]) != os.getpid() and not process_alive(int(match["pid"]))
    return False


def stale_temporaries(dest: Path) -> list[Path]:
    """The stale `.NAME.tmp-*` / `.NAME.old-*` entries beside `dest`."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir()
                  if (m := re.fullmatch(_TEMPORARY, p.name)) and m["name"] == dest.name and is_stale_temporary(p))


def remove_path(path: Path) -> None:
    """Delete a folder tree, or a file or link, ignoring errors (a later writer tries again)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def restore_moved_aside(dest: Path, stale: list[Path], complete: Callable[[Path], bool]) -> Path | None:
    """If `dest` is missing, rename the newest `complete` stale `.NAME.old-*` back to it; returns it."""
    if dest.exists():
        return None
    olds = [p for p in stale if re.fullmatch(_TEMPORARY, p.name)["kind"] == "old" and complete(p)]
    if not olds:
        return None
    newest = max(olds, key=lambda p: p.lstat().st_ctime)
    try:
        newest.rename(dest)
    except OSError:
        return None  # a concurrent writer got there first
    log.warning("restored %s from %s (a write of it was interrupted)", dest, newest.name)
    return newest


def recover(dest: Path, complete: Callable[[Path], bool] = Path.exists) -> list[Path]:
    """What interrupted writes of `dest` left: the previous complete copy put back, the rest removed.

    Called by writers only (under their lock, if they take one): readers never rename.
    """
    dest = Path(dest)
    stale = stale_temporaries(dest)
    restored = restore_moved_aside(dest, stale, complete)
    for path in stale:
        if path != restored and (path.exists() or path.is_symlink()):
            remove_path(path)
            log.info("removed %s (left by an interrupted write)", path)
    return stale


def publish_folder(tmp: Path, dest: Path) -> None:
    """Rename the complete folder `tmp` onto `dest`; a previous `dest` is moved aside first, then removed.

    Raises OSError (with the previous `dest` back in place) when a rename fails. Between the two renames
    a kill leaves only `.NAME.old-*`: `recover(dest)` puts it back.
    """
    tmp, dest = Path(tmp), Path(dest)
    old = None
    try:
        if dest.exists() or dest.is_symlink():
            old = private_temporary(dest, "old")
            dest.rename(old)
        tmp.rename(dest)
    except OSError:
        if old is not None and not dest.exists():
            old.rename(dest)  # put the previous one back
        raise
    if old is not None:
        remove_path(old)


# ----------------------------------------------------------------------------- sets of files at fixed paths

def publish_file_set(staged: dict[Path, Path], record: Path, about: dict | None = None) -> dict:
    """Rename each complete staged file onto its destination ({staged: destination}, one file system), then
    write `record` (atomically, last): a generation id and the sha256 of every file, relative to the record's
    folder. A reader comparing the files with the record sees whether they are one set (`file_set_problems`).
    """
    record = Path(record)
    files = {}
    for tmp, dest in staged.items():
        files[Path(dest).relative_to(record.parent).as_posix()] = sha256_file(tmp)
    for tmp, dest in staged.items():  # renames only: nothing can run out of space between them
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    generation = {"generation": uuid.uuid4().hex, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **(about or {}), "files": files}
    atomic_write_text(record, json.dumps(generation, indent=2) + "\n")
    return generation


def read_generation(record: Path) -> dict | None:
    """The generation record `record` (None when there is none); a damaged record is an error."""
    record = Path(record)
    if not record.is_file():
        return None
    try:
        generation = json.loads(record.read_text(encoding="utf-8"))
        files = generation["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FinCompressError(f"{record}: not a readable generation record ({type(exc).__name__})") from None
    if not isinstance(files, dict):
        raise FinCompressError(f"{record}: not a readable generation record (no file list)")
    return generation


def file_set_problems(record: Path, generation: dict | None = None) -> list[str]:
    """What differs between the files on disk and the set `record` names: missing or other files."""
    record = Path(record)
    generation = generation or read_generation(record) or {"files": {}}
    problems = []
    for relative, digest in generation["files"].items():
        path = record.parent / relative
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        actual = sha256_file(path)
        if actual != digest:
            problems.append(f"{path} has sha256 {actual[:12]}..., the set records {str(digest)[:12]}...")
    return problems


@dataclass(frozen=True)
class SetCheck:
    """What a reader may trust of a set of files: "consistent" (the files are the recorded set), "mixed"
    (a file differs from the record or is missing), "unrecorded" (files without a generation record:
    written by an older version), or "absent" (nothing written yet)."""

    state: str
    message: str
    generation: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "consistent"


def check_file_set(record: Path, member: Path, command: str) -> SetCheck:
    """Whether the files `record` names are on disk as recorded (`member`: a file of the set, to tell an
    unrecorded set from none; `command`: what writes the set, for the message)."""
    record = Path(record)
    generation = read_generation(record)
    if generation is None:
        if Path(member).is_file():
            return SetCheck("unrecorded", f"{record} not found: the files beside it cannot be checked as one set; "
                            f"re-run `{command}` to record one")
        return SetCheck("absent", f"{member} not found: run `{command}` first")
    problems = file_set_problems(record, generation)
    if problems:
        return SetCheck("mixed", f"the files of {record} are not one set ({'; '.join(problems)}): they come from "
                        f"different runs (one was interrupted or a file was replaced); re-run `{command}`",
                        generation.get("generation"))
    return SetCheck("consistent", f"set {generation.get('generation')} of {record}", generation.get("generation"))


def require_file_set(check: SetCheck) -> SetCheck:
    """Refuse a mixed set in one line; warn of an unrecorded one (older results); pass the rest."""
    if check.state == "mixed":
        raise FinCompressError(check.message)
    if check.state == "unrecorded":
        log.warning("%s", check.message)
    return check


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to write a temporary file, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_csv_rows(path: Path, rows: Iterable[dict], columns: list[str] | None = None) -> Path:
    """Append rows to a CSV (header written when the file is new); the file is rewritten atomically.

    Columns are the existing header, then `columns`, then any new keys in row order.
    """
    path = Path(path)
    rows = list(rows)
    existing: list[dict] = []
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            existing = list(reader)
    for name in [*(columns or []), *(k for row in rows for k in row)]:
        if name not in header:
            header.append(name)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(existing + rows)

    return atomic_write(path, write)


def sha256_file(path: Path) -> str:
    """Full sha256 hex digest of a file (read in chunks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(paths: Iterable[Path], length: int = 16) -> str:
    """A short digest of several files' names and bytes, in order (cache keys, fingerprints)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


def text_digest(texts: Iterable[str], length: int = 16) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:length]


# ----------------------------------------------------------------------------- file-system errors

# What to do about the usual causes; other errors name their cause only.
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose another --root",
    errno.EDQUOT: "the disk quota is used up: free space or choose another --root",
    errno.EROFS: "the file system is read-only: choose another --root",
    errno.EACCES: "no permission to write there: fix the permissions or choose another --root",
    errno.EPERM: "no permission to write there: fix the permissions or choose another --root",
}


def as_user_error(exc: OSError, what: str, unchanged: str | None = None) -> FinCompressError:
    """One line for an OSError: what failed, the path, the cause and the fix (and what is still in place)."""
    cause = _FIXES.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__)
    where = f" ({exc.filename})" if exc.filename else ""
    tail = f"; {unchanged}" if unchanged else ""
    return FinCompressError(f"{what}{where}: {cause}{tail}")


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path, need_bytes: int = 0) -> Path:
    """Refuse (one-line FinCompressError) before long work when `folder` (or the folder that would hold it)
    cannot be written or has less than `need_bytes` free. Probes by creating and removing a private file."""
    folder = Path(folder)
    probe_in = existing_ancestor(folder)
    if not probe_in.is_dir():
        raise FinCompressError(f"cannot write {folder}: {probe_in} is a file, not a folder")
    probe = private_temporary(probe_in / "write-probe")
    try:
        probe.write_bytes(b"")
        probe.unlink()
        free = shutil.disk_usage(probe_in).free
    except OSError as exc:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass  # never created
        raise as_user_error(exc, f"cannot write {folder}") from None
    if free < need_bytes:
        raise FinCompressError(f"cannot write {folder}: {free / 1e6:.1f} MB free in {probe_in}, about "
                               f"{need_bytes / 1e6:.1f} MB needed: free space or choose another --root")
    return folder


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def file_system_errors(what: str, unchanged: str | None = None) -> Iterator[None]:
    """Turn an OSError raised in the block into the one-line `as_user_error` (user errors pass through)."""
    try:
        yield
    except FinCompressError:
        raise  # already one line (some are also OSErrors, e.g. a missing split)
    except OSError as exc:
        raise as_user_error(exc, what, unchanged) from None


# ----------------------------------------------------------------------------- locks

_HELD: dict[Path, int] = {}  # lock file -> descriptor this process holds it with (flock is per descriptor)


def lock_holder(lock_file: Path) -> str:
    """Who holds `lock_file`, as its holder recorded it ("pid P on host H")."""
    try:
        return Path(lock_file).read_text(encoding="utf-8").strip() or "an unknown process"
    except OSError:
        return "an unknown process"


def acquire_lock(lock_file: Path, what: str, wait: float = 0.0) -> bool:
    """Take the exclusive lock `lock_file` (fcntl.flock) or refuse in one line naming its holder; with `wait`,
    wait up to that many seconds for the holder first (for locks held only while a short step runs).

    Returns False when this process already holds it. Held until `release_lock` or the process ends
    (the kernel drops a dead process's lock, so a killed run never leaves it locked).
    """

    if int(os.environ.get("RANK", "0") or 0) != 0:  # a data-parallel worker: rank 0 locks and writes for the group
        return False
    lock_file = _lock_key(lock_file)
    if lock_file in _HELD:
        return False
    with file_system_errors(f"cannot lock {what}"):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    if not _flock(fd, wait):
        os.close(fd)
        raise FinCompressError(f"{what} is being written by another run ({lock_holder(lock_file)}, lock "
                               f"{lock_file}); wait for it to finish, or choose another --output-name")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    _HELD[lock_file] = fd
    return True


def _flock(fd: int, wait: float) -> bool:
    """Whether the exclusive lock on `fd` was taken within `wait` seconds."""
    import fcntl

    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _lock_key(lock_file: Path) -> Path:
    # One key per file, however it is named (a root given through a link): flock conflicts between two
    # descriptors of one process too.
    lock_file = Path(lock_file)
    return lock_file.parent.resolve() / lock_file.name


def release_lock(lock_file: Path) -> None:
    import fcntl

    fd = _HELD.pop(_lock_key(lock_file), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def locked(lock_file: Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold `lock_file` for the block (a lock this process already holds stays held after it)."""
    taken = acquire_lock(lock_file, what, wait)
    try:
        yield
    finally:
        if taken:
            release_lock(lock_file)
