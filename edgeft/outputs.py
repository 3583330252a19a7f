"""Output folders: where a command may write, one writer at a time, and replacement only when complete.

Every command that writes a folder (``finetune``, ``qat``, ``export``, ``bench``) goes through
:func:`open_output`:

1. the location is checked before any work starts (not empty, not a file, not inside the data);
2. the folder is locked with an OS file lock (``flock``), which the kernel releases when the process
   ends, however it ends, so a crash never leaves a stale lock behind;
3. with ``replace=True`` (``--force``) the new content is built in a hidden sibling folder and swapped
   in only once it is complete: a failed or interrupted run leaves the previous folder as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgeft.errors import OutputLockedError, OutputWriteError, UsageError

LOCK_FILE = ".edgeft.lock"
_STAGING_PREFIX = ".edgeft-staging-"
_RETIRED_PREFIX = ".edgeft-retired-"
_RESUMABLE_PREFIX = ".edgeft-resumable-"


def check_output_location(out: Path | str, inputs: Sequence[Path] = (), option: str = "--out") -> Path:
    """Refuse an output path that would write somewhere the user did not mean, or cannot be written; return it.

    Refused: an empty path, an existing file, a path below a file, a folder (or, for a new folder,
    the nearest existing parent) without write permission, and a path inside one of ``inputs``.

    ``inputs`` are folders the command reads (a data directory, a run directory): writing inside one of
    them would, for a data directory, add a class folder that breaks every later run on that data.
    """
    if out is None or str(out).strip() == "":
        raise UsageError(f"{option} is empty; name the folder to write")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} exists and is not a folder; choose a folder path")
    resolved = path.resolve()
    ancestor = resolved.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, not a folder; choose a folder path")
    for folder in (resolved, ancestor) if path.exists() else (ancestor,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputWriteError(f"no permission to write in {folder} ({option} {path}); choose another folder")
    for folder in inputs:
        source = Path(folder).resolve()
        if resolved == source or source in resolved.parents:
            raise UsageError(f"{option} {path} is inside {folder}, which this command reads; "
                             "choose a folder outside it")
    return path


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``FOLDER/.edgeft.lock``, holding the holder's PID.

    The lock file is removed on release; a waiter that opened it before the removal notices that its
    file is no longer the one at the path (inode check) and tries again, so two processes can never
    both believe they hold the folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputLockedError` naming the holder's PID."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileNotFoundError:  # an empty folder removed by its previous holder: make it again
                self.folder.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputLockedError(f"{self.folder} is being written by another edgeft process "
                                        f"({self._holder()}); wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and our lock: take the new file
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return
        raise OutputLockedError(f"{self.folder}: could not take the output lock; another process keeps "
                                "replacing it")

    def _holder(self) -> str:
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            return "PID unknown"
        return f"PID {text}" if text.isdigit() else "PID unknown"

    def release(self) -> None:
        """Remove the lock file and release the lock (the order keeps waiters correct)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class OutputFolder:
    """Where a command writes: ``work`` during the run, which becomes ``final`` when it completes."""

    final: Path
    work: Path

    @property
    def staged(self) -> bool:
        """True when the run writes beside the final folder and is swapped in at the end."""
        return self.work != self.final


def staging_path(final: Path, pid: int | None = None) -> Path:
    """The hidden sibling a replacement of ``final`` is built in: per process, or (``pid=None``) resumable."""
    final = Path(final)
    if pid is None:
        return final.parent / f"{_RESUMABLE_PREFIX}{final.name}"
    return final.parent / f"{_STAGING_PREFIX}{pid}-{final.name}"


def _clean_leftovers(final: Path, keep_resumable: bool) -> None:
    """Remove staging and retired folders of earlier runs that died mid-way (we hold the lock).

    Only this folder's own leftovers: the names are matched exactly, never by prefix, so the
    staging folder of a sibling ``run2`` (maybe in use by another process) is left alone.
    """
    parent = final.parent
    if not parent.is_dir():
        return
    own = re.compile(rf"^(?:{re.escape(_STAGING_PREFIX)}|{re.escape(_RETIRED_PREFIX)})\d+-{re.escape(final.name)}$")
    resumable = staging_path(final)
    for entry in parent.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            continue
        if own.match(entry.name) or (entry == resumable and not keep_resumable):
            shutil.rmtree(entry, ignore_errors=True)


def swap_in(staging: Path, final: Path) -> None:
    """Make ``staging`` the folder at ``final``; the previous folder is removed only afterwards.

    Both renames are within one parent folder (one file system), so each is atomic; between them the
    previous content sits complete under a hidden retired name, which the next run cleans up.
    """
    retired = final.parent / f"{_RETIRED_PREFIX}{os.getpid()}-{final.name}"
    had_previous = final.exists()
    if had_previous:
        os.replace(final, retired)
    try:
        os.replace(staging, final)
    except OSError:
        if had_previous:
            os.replace(retired, final)
        raise
    if had_previous:
        shutil.rmtree(retired, ignore_errors=True)


def has_content(folder: Path) -> bool:
    """True when ``folder`` holds anything besides an output lock file."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


def _carry_over(final: Path, staging: Path, carry: Callable[[Path], bool]) -> None:
    """Copy into ``staging`` the entries of ``final`` a replacement must keep (files the user put there)."""
    for entry in final.iterdir():
        target = staging / entry.name
        if entry.name == LOCK_FILE or os.path.lexists(target) or not carry(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)


@contextlib.contextmanager
def open_output(out: Path, replace: bool, inputs: Sequence[Path] = (), option: str = "--out", *,
                always_stage: bool = False, resumable: Callable[[Path], bool] | None = None,
                resume: bool = False, carry: Callable[[Path], bool] | None = None) -> Iterator[OutputFolder]:
    """Check, lock and (with ``replace``) stage an output folder for one command.

    Yields an :class:`OutputFolder`; the command writes into ``work``. With ``replace`` and an existing
    folder (or ``always_stage``), ``work`` is a hidden sibling that replaces ``final`` when the block
    completes; when the block raises (an error, Ctrl-C, SIGTERM) it is removed and ``final`` is left
    untouched. With ``resumable``, the sibling has a fixed name (:func:`staging_path`) and is kept after
    an interruption when ``resumable(work)`` says it holds something to resume; ``resume=True`` then
    continues in it (and keeps it whatever the outcome). Entries of the old folder for which ``carry``
    is true are copied into the new one before the swap. A folder this call created is removed again
    if nothing was written into it.
    """
    final = check_output_location(out, inputs, option)
    created = not final.exists()
    lock = OutputLock(final)
    lock.acquire()
    try:
        resumable_staging = staging_path(final)
        resuming = resume and resumable is not None and resumable(resumable_staging)
        _clean_leftovers(final, keep_resumable=resuming)
        if not resuming and not always_stage and not (replace and has_content(final)):
            yield OutputFolder(final=final, work=final)
            return
        staging = resumable_staging if resumable is not None else staging_path(final, os.getpid())
        staging.mkdir(exist_ok=resuming)
        try:
            yield OutputFolder(final=final, work=staging)
        except BaseException as error:
            # kept: an interrupted run's checkpoints, and the one being resumed (a refused --resume loses nothing)
            keep = resumable is not None and resumable(staging) and (resuming or isinstance(error, KeyboardInterrupt))
            if not keep:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        # the lock file belongs to the folder being replaced; the new one must not inherit a copy
        (staging / LOCK_FILE).unlink(missing_ok=True)
        if carry is not None and final.is_dir():
            _carry_over(final, staging, carry)
        swap_in(staging, final)
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                final.rmdir()  # only succeeds when nothing was written


_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
}
_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM)


def write_failure(error: BaseException) -> OutputWriteError | None:
    """Translate a failed write (full disk, read-only, no permission) into a one-line error, or None.

    Keras and h5py wrap the ``OSError`` of a failed write in their own exceptions; the cause chain is
    searched so that a full disk reads the same whichever library hit it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ERRNOS:
            where = current.filename or "an output file"
            return OutputWriteError(f"could not write {where}: {_WRITE_ERRNOS[current.errno]}")
        if isinstance(current, OSError) and current.errno in _ACCESS_ERRNOS and current.filename:
            return OutputWriteError(f"no permission to write {current.filename}")
        first_line = (str(current).splitlines() or [""])[0][:160]
        for number, reason in _WRITE_ERRNOS.items():
            if os.strerror(number) in first_line:
                return OutputWriteError(f"could not write an output file: {reason} ({first_line})")
        current = current.__cause__ or current.__context__
    return None


def keep_user_entries(produced: Sequence[str]) -> Callable[[Path], bool]:
    """A ``carry`` predicate: keep every entry but the ones a command produces (and temporary files)."""
    names = set(produced) | {LOCK_FILE}

    def keep(entry: Path) -> bool:
        return entry.name not in names and ".partial" not in entry.name

    return keep
