"""What a file is, by its name or else by its first bytes: a TensorBoard event file, a document
rewritten whole on every save, a CSV or JSON-lines metrics file, or console text (whose dialects
are chosen per line)."""

from __future__ import annotations

import fnmatch
import os
import stat
import struct

from .formats.tfevents import MAX_RECORD, masked_crc32c

# Names that give the format away. Anything else is read as console text.
_BY_NAME = (
    ("events.out.tfevents.*", "tensorboard"),
    ("trainer_state.json", "trainer_state"),
    ("hparams.yaml", "hparams"),
    ("*.csv", "csv"),
    ("*.jsonl", "jsonl"),
    ("*.ndjson", "jsonl"),
)

# What a directory is searched for.
KNOWN_FILES = ("metrics.csv", "*.csv", "*.jsonl", "*.ndjson", "events.out.tfevents.*",
               "trainer_state.json", "hparams.yaml", "*.log", "*.txt")


def format_by_name(path: str) -> str | None:
    name = os.path.basename(path)
    for pattern, fmt in _BY_NAME:
        if fnmatch.fnmatchcase(name, pattern):
            return fmt
    return None


def is_known_file(path: str) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in KNOWN_FILES)


# How much of a file its content is judged by: a TensorBoard file's first record (the file
# version, some 30 bytes) and the top of a trainer_state.json (its keys are sorted, so
# "log_history" comes within the first few hundred bytes).
SNIFF_BYTES = 4096


def format_by_content(path: str) -> str | None:
    """What a regular file is by its first bytes, whatever its name: a TensorBoard event file
    (TFRecord framing whose checksums hold) or a trainer_state.json document; None for anything
    else (console text), for a file that is empty or not there yet, and for what is not a regular
    file (reading a FIFO would wait for its writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there meanwhile must not block
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, SNIFF_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    if _is_tfrecord(head):
        return "tensorboard"
    if _is_trainer_state(head):
        return "trainer_state"
    return None


def _is_tfrecord(head: bytes) -> bool:
    """A TFRecord header (length, then the masked CRC-32C of the length) and, where the whole
    first record is in ``head``, its data's CRC too."""
    if len(head) < 12:
        return False
    (length,) = struct.unpack_from("<Q", head)
    if length > MAX_RECORD or masked_crc32c(head[:8]) != struct.unpack_from("<I", head, 8)[0]:
        return False
    end = 12 + length
    return len(head) < end + 4 or masked_crc32c(head[12:end]) == struct.unpack_from("<I", head, end)[0]


def _is_trainer_state(head: bytes) -> bool:
    """One JSON document (not a JSON line: its first line is the opening brace alone) with the
    Trainer's state keys."""
    text = head.decode("utf-8", "replace").lstrip()
    return text[:1] == "{" and text[1:].lstrip(" \t")[:1] in ("\n", "\r") \
        and '"log_history"' in text and '"global_step"' in text
