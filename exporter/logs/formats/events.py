"""Events any console log can report, whatever its dialect: out-of-memory and fp16 overflow.

These lines come from PyTorch, the kernel, DeepSpeed, apex or fairseq rather than from the
dialect that prints the metrics, so the caller runs ``scan_events`` on every console line.
Every pattern here is a short literal (or bounded) match, so scanning stays linear in the line.
"""

from __future__ import annotations

import re

from .base import Event, Record

# Lines longer than this are not log messages (a runaway print, a binary blob): skipped unread.
MAX_LINE = 1 << 20

_OOM = re.compile(
    # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError, as the last line of a traceback:
    # "...OutOfMemoryError: CUDA out of memory. Tried to allocate ...". Requiring a message after
    # the colon keeps source lines such as "except torch.cuda.OutOfMemoryError:" out.
    r"OutOfMemoryError: [A-Za-z]"
    # Older torch raised a RuntimeError with the same message.
    r"|RuntimeError: CUDA out of memory"
    # The CUDA runtime itself, e.g. "RuntimeError: CUDA error: out of memory".
    r"|CUDA error: out of memory"
    # cuBLAS failing to allocate its workspace is an out-of-memory in disguise.
    r"|[Ee]rror: CUBLAS_STATUS_ALLOC_FAILED"
    # Host memory: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    # (Linux) or "DefaultCPUAllocator: not enough memory: ..." (Windows).
    r"|DefaultCPUAllocator: (?:can't allocate memory|not enough memory)"
)

_OVERFLOW = re.compile(
    # DeepSpeed's ZeRO and fp16 optimizers and its loss scaler, e.g.
    # "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768"
    # (also the hysteresis form, which skips the step without lowering the scale yet).
    r"\[deepspeed\] OVERFLOW!"
    # DeepSpeed's unfused fp16 optimizer: "[deepspeed] fp16 dynamic loss scale overflow! ..."
    r"|\[deepspeed\] fp16 dynamic loss scale overflow!"
    # apex amp: "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0"
    r"|Gradient overflow\. {1,2}Skipping step"
    # fairseq: "NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 64.0"
    r"|gradient overflow detected, ignoring gradient"
)

# tqdm's counter: "| 450/1000 [". The total may be "?" when unknown; such bars are ignored.
_BAR = re.compile(r"\|[ ]{0,8}(\d{1,15})/(\d{1,15}|\?)[ ]{0,8}\[")


# Every pattern above holds one of these words ("Killed" is the shell's word for the OOM
# killer). A substring test is far cheaper than trying the alternatives at every position.
_WORDS = ("emory", "CUBLAS", "Killed", "verflow", "VERFLOW")


def may_report_events(text: str) -> bool:
    """False when no line of ``text`` can report an event: most chunks of a log, tested whole."""
    return any(word in text for word in _WORDS)


def scan_events(line: str) -> Record | None:
    """The event a line reports, if any: one record per line at most."""
    if len(line) > MAX_LINE:
        return None
    if "emory" in line or "CUBLAS" in line:
        if _OOM.search(line):
            return Record(event=Event.OOM)
    elif "Killed" in line and line.strip() == "Killed":
        return Record(event=Event.OOM)
    if ("verflow" in line or "VERFLOW" in line) and _OVERFLOW.search(line):
        return Record(event=Event.LOSS_SCALE_OVERFLOW)
    return None


def parse_progress_bar(line: str) -> tuple[int, int] | None:
    """tqdm's ``N/TOTAL`` from a bar such as `` 45%|████▌     | 450/1000 [01:02<01:16,  7.21it/s]``.

    Several redraws may share one line; the last one is the newest, so it wins.
    """
    if len(line) > MAX_LINE or "|" not in line:  # no bar without its "|"
        return None
    counters: list[tuple[str, str]] = _BAR.findall(line)
    for done, total in reversed(counters):
        if total != "?":
            return int(done), int(total)
    return None
