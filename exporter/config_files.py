"""Reading a configuration file (the config, the web config, a certificate): a regular file of
bounded size, and YAML within bounds, each mistake one line naming the file (``ConfigError``,
which the command prints before it exits with status 2).
"""

from __future__ import annotations

import os
import stat

import yaml


class ConfigError(Exception):
    """A one-line, user-facing description of a configuration mistake."""


# What a config file (or web config, or certificate) may be: a regular file this big at most,
# this deep at most, with this many values at most once YAML's aliases are expanded. Ours need a
# few kilobytes and five levels.
MAX_FILE_BYTES = 1 << 20
MAX_NESTING = 32
MAX_VALUES = 100_000


class Unreadable(Exception):
    """Why a file cannot be read, in a few words."""


def read_regular_file(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of ``limit`` bytes at most. A FIFO, device or directory is
    refused before it is opened: opening a FIFO for reading waits for a writer, a device may do
    anything."""
    try:
        _regular(os.stat(path).st_mode)
        # Non-blocking, and checked again once open: the path may have been replaced meanwhile.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            _regular(os.fstat(handle.fileno()).st_mode)
            data = handle.read(limit + 1)
    except OSError as error:
        raise Unreadable(error.strerror or str(error)) from None
    if len(data) > limit:
        raise Unreadable(f"larger than {limit / 2**20:g} MiB, the limit")
    return data


def _regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    raise Unreadable(next((f"not a regular file but {kind}" for test, kind in kinds if test(mode)),
                          "not a regular file"))


def read_yaml(path: str, what: str = "config"):
    """A YAML file's content ({} when empty); a file that is unreadable, too large, not UTF-8,
    not YAML or nested too deeply is a one-line ConfigError."""
    try:
        data = read_regular_file(path)
    except Unreadable as error:
        raise ConfigError(f"{path}: cannot read {what}: {error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: {what} is not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start}") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested more than {MAX_NESTING} levels deep") from None
    except ValueError as error:  # a value YAML recognised but could not build: a 5,000-digit integer, 2024-13-45
        raise ConfigError(f"{path}: invalid YAML: {str(error).split(';')[0]}") from None
    _check_size(content, path, what)
    return {} if content is None else content


def _check_size(content, path: str, what: str) -> None:
    pending, count = [(content, 1)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if depth > MAX_NESTING:
            raise ConfigError(f"{path}: {what} is nested more than {MAX_NESTING} levels deep")
        if count > MAX_VALUES:
            raise ConfigError(f"{path}: {what} holds more than {MAX_VALUES} values (aliases expanded)")
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
