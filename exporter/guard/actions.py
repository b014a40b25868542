"""What the guard does to a failing run: send its process a signal, or run a command.

Both are given the process the guard checked (found, alive, started before the events) and the
finding. A signal goes to that process alone, through psutil, which refuses a process whose PID
was reused since it was found. A command runs in the background with /bin/sh (so that
``scancel $SLURM_JOB_ID`` works), in a session of its own, with the finding in its environment;
one that outlives its timeout is killed, with everything it started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Callable

import psutil

from .rules import Finding

log = logging.getLogger(__name__)

MAX_OUTPUT_LOGGED = 2000  # characters of a command's output that its log line carries


class SignalAction:
    def __init__(self, name: str) -> None:
        self.label = name  # the `action` label: SIGINT, SIGTERM, ...
        self.signal = getattr(signal, name)

    def describe(self, proc: psutil.Process) -> str:
        return f"send {self.label} to process {proc.pid}"

    def run(self, proc: psutil.Process, finding: Finding, failed: Callable[[str], None]) -> None:
        if _ignores(proc.pid, self.signal):
            # A job started with `cmd &` from a script (a Slurm batch script, nohup) inherits
            # SIGINT and SIGQUIT ignored: the signal would be delivered, and change nothing.
            failed(f"process {proc.pid} ignores {self.label} (a shell script's background job inherits SIGINT "
                   "ignored): set guard.signal to one it reacts to, such as SIGTERM, or guard.command")
            return
        try:
            proc.send_signal(self.signal)
        except psutil.NoSuchProcess:
            failed(f"process {proc.pid} is gone (or its PID was reused)")
        except psutil.Error as error:  # AccessDenied: another user's process
            failed(f"cannot signal process {proc.pid}: {type(error).__name__}")


def _ignores(pid: int, sig: int) -> bool:
    """Whether the process ignores ``sig``: its SigIgn mask in /proc (False where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class CommandAction:
    label = "command"

    def __init__(self, command: str, timeout: float) -> None:
        self.command, self.timeout = command, timeout

    def describe(self, proc: psutil.Process) -> str:
        return f"run {self.command!r} for process {proc.pid}"

    def run(self, proc: psutil.Process, finding: Finding, failed: Callable[[str], None]) -> None:
        env = {**os.environ, "TRAINING_GUARD_RULE": finding.rule, "TRAINING_GUARD_REASON": finding.reason,
               "TRAINING_GUARD_PID": str(proc.pid)}
        try:
            child = subprocess.Popen(["/bin/sh", "-c", self.command], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            failed(f"cannot run the command: {error.strerror or error}")
            return
        threading.Thread(target=self._wait, args=(child, finding, failed), name="guard-command", daemon=True).start()

    def _wait(self, child: subprocess.Popen, finding: Finding, failed: Callable[[str], None]) -> None:
        try:
            output, _ = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its own session: the shell and what it started
            output, _ = child.communicate()
            failed(f"the command ran longer than {self.timeout:g} s and was killed; output: {_tail(output)}")
            return
        if child.returncode != 0:
            failed(f"the command exited with status {child.returncode}; output: {_tail(output)}")
        else:
            log.info("guard: rule %s: the command succeeded; output: %s", finding.rule, _tail(output))


def _tail(output: bytes) -> str:
    text = output.decode("utf-8", "replace").strip()
    return repr(text[-MAX_OUTPUT_LOGGED:]) if text else "none"
