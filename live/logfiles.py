"""Log files that rotate without losing a line: a job's papermill log and a brain's own.

Logs rotate by renaming, which loses no line: a run's log ``runs/JOB/STAMP.log`` becomes
``STAMP.log.1`` (older generations shifted up to LOG_BACKUPS, the oldest dropped) at the first line
end past LOG_MAX_BYTES (within a line at twice that). Papermill and its kernel do not write the file: they write to a pipe, and
the runner's :class:`LogPump` thread, the file's only writer, appends what comes out of it and
renames between two writes. (A file a child writes through an fd of its own can be neither
renamed, the child would write on into the old generation, nor copied and emptied, which loses
what it writes in between.) The brain's ``logs/JOB.log`` has one writer too, the kernel's
:func:`rotating_handler`, and rotates the same way. :func:`tail` reads a log across its
generations, oldest first.
"""

from __future__ import annotations

import glob
import logging
import logging.handlers
import os
import select
import threading
import time
from pathlib import Path

LOG_MAX_BYTES = 10 * 2**20  # a job's log past this size rotates
LOG_BACKUPS = 3  # rotated generations kept: LOG.1 (newest) to LOG.3
PUMP_DRAIN_S = 2.0  # a run's end: longest wait for the rest of its output to be written


def rotate(path: Path, backups: int = LOG_BACKUPS) -> None:
    """Rename `path` to ``path.1``, the generations before it up one (``.1`` to ``.2``...), and
    drop the oldest past `backups` (at least 1).

    A rename moves no byte, so no line is lost, provided `path` has one writer that calls this
    between two of its writes and then opens a new `path`: a process writing through an fd of its
    own would write on into ``path.1``.
    """
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


class LogPump:
    """A run's log: the pipe its processes write to, and the thread that appends it to the file.

    Papermill, its kernel and whatever they start inherit the pipe's write end
    (:attr:`write_fd`) as stdout and stderr. The thread, named ``log-JOB``, is the file's only
    writer: it copies the bytes as they come (never decoded, so no byte can trip it) and rotates
    (:func:`rotate`) at the first line end past `max_bytes`, between two writes, so every line is
    in exactly one generation, whole. It ends at the pipe's end of file, when every process of
    the job has exited, or when :meth:`close` gives up waiting for that.

    The supervisor's loop never reads the pipe: a job writing faster than the disk takes waits
    on its own writes, never the loop. A write that fails (a full disk) is logged once, its bytes
    counted in :attr:`dropped`, and the thread reads on, so the job never blocks on a pipe nobody
    empties. A supervisor that stops stops its jobs first and waits for their last bytes; one
    that is killed loses what was still in the pipe (at most its 64 KiB), and the job it leaves
    behind has its writes fail from then on (EPIPE: a Python process carries on, another may die
    of SIGPIPE), until its brain sees the supervisor gone and stops it. What the file holds
    stays, and nothing is written twice: a restarted supervisor starts a new run, with a log of
    its own.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, log: logging.Logger) -> None:
        self.path, self.max_bytes, self.backups, self.log = path, max_bytes, backups, log
        self.dropped = 0  # bytes whose write failed
        self.rotations = 0
        self._fd = self._open()  # here, not in the thread: the run's log exists from its start
        self._size = os.fstat(self._fd).st_size
        self._read_fd, self.write_fd = os.pipe()  # neither inherited by other children (PEP 446)
        self._stopping = threading.Event()
        self._stop_by = 0.0
        self._failing = False
        self._thread = threading.Thread(
            target=self._pump, name=f"log-{path.parent.name}", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """Close the write end here once the job's processes hold it: their exit ends the pipe."""
        os.close(self.write_fd)

    def close(self, timeout_s: float = PUMP_DRAIN_S) -> None:
        """Wait up to `timeout_s` for the pipe's end and the last bytes written; past that (a
        process the job left behind still holds the pipe), write what it holds and stop."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.log.warning(
                "%s: a process outside the job's known tree still holds its log; no longer read",
                self.path,
            )
            self._stop_by = time.monotonic() + 1.0
            self._stopping.set()
            self._thread.join(timeout_s)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        try:
            while True:
                stopping = self._stopping.is_set()
                if not poller.poll(0 if stopping else 250):
                    if stopping:
                        return  # close() gave up waiting, and nothing more is buffered
                    continue
                data = os.read(self._read_fd, 2**16)
                if not data:
                    return  # end of file: every process holding the write end has exited
                self._take(data)
                if stopping and time.monotonic() > self._stop_by:
                    return  # a writer left behind writes on: stop anyway
        except Exception:
            self.log.exception("the log of %s is no longer written", self.path)
        finally:
            os.close(self._read_fd)  # a writer left behind gets EPIPE, never blocks
            os.close(self._fd)

    def _take(self, data: bytes) -> None:
        """Append `data`, rotating after each line end that brings the file past max_bytes, or
        in a line at twice max_bytes (output without line ends, a progress bar's ``\r``, must
        not grow one file without bound)."""
        while data:
            hard = max(0, 2 * self.max_bytes - self._size)
            # data[i] ends up at offset size + i: the file reaches max_bytes at i = max - size - 1
            end = data.find(b"\n", max(0, self.max_bytes - self._size - 1))
            if end < 0 and len(data) <= hard:
                self._write(data)
                return
            cut = hard if end < 0 else min(end + 1, hard)
            self._write(data[:cut])
            self._rotate()
            data = data[cut:]

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as exc:
            self.dropped += len(view)
            if not self._failing:
                self.log.warning("cannot write %s, its lines are dropped: %s", self.path, exc)
            self._failing = True
            return
        if self._failing:
            self.log.info("writing %s again; %d bytes were dropped", self.path, self.dropped)
            self._failing = False

    def _rotate(self) -> None:
        try:
            rotate(self.path, self.backups)
            fd = self._open()
        except OSError as exc:  # the file stays whole, in one generation or the next: no loss
            self.log.warning("cannot rotate %s, writing on: %s", self.path, exc)
            self._size = 0  # tried again after another max_bytes
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0
        self.rotations += 1


def generations(path: Path) -> list[Path]:
    """The files of a rotated log, oldest first: ``LOG.N`` .. ``LOG.1``, then ``LOG``."""
    rotated = []
    for older in path.parent.glob(f"{glob.escape(path.name)}.*"):
        number = older.name[len(path.name) + 1 :]
        if number.isdigit():
            rotated.append((int(number), older))
    return [older for _, older in sorted(rotated, reverse=True)] + [path]


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of the log `path`, across its rotated generations, oldest first.

    Files are opened newest first and a file met twice is read once, so a rotation meanwhile
    shows nothing twice (a generation rotated past between two opens is missed).
    """
    chunks: list[bytes] = []
    seen: set[tuple[int, int]] = set()
    found = 0
    for file in reversed(generations(path)):
        try:
            with open(file, "rb") as log:
                stat = os.fstat(log.fileno())
                if (stat.st_dev, stat.st_ino) in seen:
                    continue
                seen.add((stat.st_dev, stat.st_ino))
                chunks.append(log.read())
        except FileNotFoundError:
            continue
        found += chunks[-1].count(b"\n")
        if found > lines:
            break
    text = b"".join(reversed(chunks)).decode(errors="replace")
    return text.splitlines()[-lines:] if lines > 0 else []


def rotating_handler(
    path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> logging.Handler:
    """A log file handler that rotates as :func:`rotate` does (``LOG.1`` the newest)."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler
