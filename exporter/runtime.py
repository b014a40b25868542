"""What the serving process sets up for itself before anything else: its limit on open files,
its answer to each signal, and a log record for a thread that dies.

- SIGTERM and SIGINT stop the exporter.
- SIGHUP is logged and otherwise ignored: the configuration is read once, at start, so a
  changed one takes a restart (a reload would have to rebuild every collector and the server).
- SIGUSR1 and SIGQUIT write every thread's stack to the log and the exporter keeps running:
  what to look at when it seems stuck.
"""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import sys
import threading
import traceback
from typing import Callable

log = logging.getLogger(__name__)


def prepare(stop: Callable[[], None]) -> None:
    """Call from the main thread before the exporter starts; ``stop`` ends the serve loop."""
    raise_open_file_limit()

    def request_stop(signum, _frame) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    signal.signal(signal.SIGHUP, _hangup)
    for signum in (signal.SIGUSR1, signal.SIGQUIT):
        signal.signal(signum, _dump_stacks)
    threading.excepthook = _thread_died


def raise_open_file_limit() -> None:
    """Every connection is a descriptor: take all the system allows, as Go's runtime does for
    Prometheus's exporters (the soft limit is often 1024, the hard one far higher)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:  # e.g. an unlimited hard limit that the kernel refuses
        log.debug("open files limit left at %d (raising it to %d failed: %s)", soft, hard, error)
        return
    log.info("raised the limit on open files from %d to %d", soft, hard)


def _hangup(_signum, _frame) -> None:
    log.warning("received SIGHUP: ignored; the configuration is read only at start, so restart the exporter "
                "to apply a changed one")


def _dump_stacks(signum, _frame) -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sys._current_frames()
    stacks = "\n".join(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}"
                       for ident, frame in frames.items())
    log.warning("received %s: the stacks of all %d threads follow; the exporter keeps running\n%s",
                signal.Signals(signum).name, len(frames), stacks)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("thread %s ended by an uncaught error", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def wait_for(stopping: threading.Event) -> None:
    """Sleep in the main thread until ``stopping`` is set by a signal's handler, without waking
    up in between. Linux may deliver a signal to any thread, and CPython runs the Python handler
    only in the main thread, once that thread runs again: the signal's C handler writes to a
    wake-up descriptor, on which the main thread waits."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(wake_read, select.POLLIN)
    try:
        while not stopping.is_set():
            poller.poll()  # a signal came: its handler runs before this returns to the loop
            try:
                while os.read(wake_read, 512):
                    pass
            except BlockingIOError:
                pass
    finally:
        signal.set_wakeup_fd(previous)
        os.close(wake_read)
        os.close(wake_write)
