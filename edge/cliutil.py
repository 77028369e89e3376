"""Small helpers shared by the two command lines (``edgewatch`` and ``edgewatch-agent``).

Every flag has an environment twin (``EDGEWATCH_<FLAG>``) shown in ``--help``; exit codes are
0 on a clean stop, 2 on bad configuration or usage, 1 on a runtime failure, and 141 when the
reader of the output went away (``edgewatch incidents list | head -1``; see :func:`run_main`).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`, so `set -o pipefail` sees the same


def add_flag(parser: argparse.ArgumentParser, flag: str, *, help: str, default: Any = None, env_prefix: str = "",
             **kw: Any) -> None:
    """Add ``--flag`` whose default comes from ``EDGEWATCH_<ENV_PREFIX><FLAG>`` when that is set.

    The variable's text is converted by ``type`` when the command is parsed (argparse converts a
    string default), so a bad value is that command's usage error (exit 2), not a traceback while
    every command's parser is built."""
    env = "EDGEWATCH_" + env_prefix + flag.lstrip("-").replace("-", "_").upper()
    value = os.environ.get(env, default)
    shown = f" (default: {default})" if default is not None else ""
    parser.add_argument(flag, default=value, help=f"{help}{shown} [env: {env}]", **kw)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger; only entry points call this."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


def run_main(body: Callable[[], int]) -> int:
    """Run a command line's ``body`` (parsing included) and return its exit code; when the reader
    of stdout or stderr closes its end (``| head -1``), stop quietly with :data:`EXIT_PIPE_CLOSED`.

    Python ignores SIGPIPE, so a write to a closed pipe raises :class:`BrokenPipeError`; this
    catches it once for every command, and (as the Python docs' note on SIGPIPE advises) points
    the closed stream at ``/dev/null`` so the flush at interpreter exit does not raise again.
    SIGPIPE itself stays ignored: restoring its default would kill a long-running command on a
    socket's EPIPE. A :class:`BrokenPipeError` while both streams are open (a socket) is re-raised.
    """
    try:
        try:
            return body()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        closed = [s for s in (sys.stdout, sys.stderr) if _closed_pipe(s)]
        if not closed:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in closed:
            os.dup2(devnull, stream.fileno())
        os.close(devnull)
        return EXIT_PIPE_CLOSED


def _closed_pipe(stream: Any) -> bool:
    """True when ``stream``'s descriptor reports an error or hang-up (a pipe whose reader is gone)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no descriptor (a test's StringIO) or already closed
        return False


class ProgressLine:
    """A progress line for long work: on a terminal redrawn in place (``\\r``, erase to the end of
    the line); on anything else (a pipe, a log file, a service's journal) a plain line at most every
    ``every_s`` seconds, so a log never holds a control code. :meth:`line` prints a line of its own
    above the progress line. The stream is looked up at each write (``sys.stdout`` by default, so a
    test's capture works); safe to call from several threads.
    """

    CLEAR = "\r\x1b[K"

    def __init__(self, stream: Callable[[], TextIO] = lambda: sys.stdout, *, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._every_s = every_s
        self._clock = clock
        self._next = float("-inf")
        self._drawn = False  # a progress line is on the terminal, without its newline
        self._lock = threading.Lock()

    def _tty(self, out: TextIO) -> bool:
        try:
            return out.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` as the progress: redrawn on a terminal, otherwise printed if ``every_s`` has
        passed since the last one (or ``force``, for the last update)."""
        with self._lock:
            out = self._stream()
            if self._tty(out):
                out.write(self.CLEAR + text)
                self._drawn = True
            elif force or self._clock() >= self._next:
                out.write(text + "\n")
                self._next = self._clock() + self._every_s
            out.flush()

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own (on a terminal, over the progress line, which the next
        :meth:`update` draws again)."""
        with self._lock:
            out = self._stream()
            out.write((self.CLEAR if self._drawn and self._tty(out) else "") + text + "\n")
            self._drawn = False
            out.flush()

    def close(self) -> None:
        """End a drawn progress line with its newline."""
        with self._lock:
            if self._drawn:
                out = self._stream()
                out.write("\n")
                out.flush()
                self._drawn = False
