"""Which files a configured path names now: a file, a glob or a directory, searched within bounds.

The search follows symbolic links, as a user who writes ``/runs/**/train.log`` expects, but
never walks a directory twice (a link back up the tree is a loop, not more files), never goes
deeper than ``MAX_DEPTH`` and never looks at more than ``MAX_ENTRIES`` entries in one search: a
tree of links cannot make it run for ever or fill the memory. Hidden files and directories are
skipped, as the shell's ``*`` skips them.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterator

from .detect import is_known_file

log = logging.getLogger(__name__)

MAX_DEPTH = 8  # directory levels below a glob's fixed part (or a directory's) searched at most
DIRECTORY_DEPTH = 4  # levels searched below a configured directory
MAX_ENTRIES = 100_000  # directory entries looked at in one search
_MAGIC = re.compile(r"[*?\[]")


def has_magic(path: str) -> bool:
    return _MAGIC.search(path) is not None


def expand(path: str) -> tuple[list[str], list[str]]:
    """The files ``path`` names now, sorted, and the directories searched for them. A plain path
    is returned even before it exists, with its directory."""
    directories: list[str] = []
    if has_magic(path):
        base, pattern = _split_glob(path)
        matches = _glob_regex(pattern).fullmatch
        depth = MAX_DEPTH if "**" in pattern else pattern.count("/")
        skip = len(base.rstrip(os.sep)) + 1  # the walk's paths begin with the base and a separator
        files = [found for found in _walk(base, depth, directories) if matches(found[skip:])]
    elif os.path.isdir(path):
        files = [found for found in _walk(path, DIRECTORY_DEPTH, directories) if is_known_file(found)]
    else:
        return [path], [os.path.dirname(os.path.abspath(path))]
    return sorted(files), directories


def _split_glob(path: str) -> tuple[str, str]:
    """``/runs/*/train.log`` -> (``/runs``, ``*/train.log``): the fixed directory, the pattern."""
    parts = path.split(os.sep)
    fixed = next(i for i, part in enumerate(parts) if has_magic(part))
    base = os.sep.join(parts[:fixed]) or (os.sep if path.startswith(os.sep) else ".")
    return base, "/".join(parts[fixed:])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression over a path relative to its fixed directory: ``**`` is any
    number of directories (none included; at the end, any file below), ``*`` and ``?`` stay
    within one name and do not match a name's leading dot."""
    parts = pattern.split("/")
    out = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append("(?:[^/.][^/]*/)*" + ("[^/.][^/]*" if last else ""))
            continue
        guard = "(?!\\.)" if part[:1] in "*?[" else ""
        out.append(guard + _component(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _component(part: str) -> str:
    """One name's glob as a regular expression that never crosses a "/"."""
    out, i = [], 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = part.find("]", i + 2)
            if end < 0:
                out.append("\\[")
            else:
                body = part[i + 1:end]
                if body[:1] == "!":
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\").replace("/", "") + "]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _walk(root: str, max_depth: int, directories: list[str]) -> Iterator[str]:
    """Every file under ``root`` (links followed, each directory once), ``max_depth`` levels down
    at most, within ``MAX_ENTRIES`` entries. The directories searched are added to
    ``directories``."""
    seen: set[tuple[int, int]] = set()
    stack = [(root, 0)]
    entries = 0
    while stack:
        directory, depth = stack.pop()
        try:
            identity = os.stat(directory)
            with os.scandir(directory) as scan:
                listing = sorted(scan, key=lambda entry: entry.name, reverse=True)
        except OSError:
            continue
        if (identity.st_dev, identity.st_ino) in seen:
            continue  # a link back to a directory already searched
        seen.add((identity.st_dev, identity.st_ino))
        directories.append(directory)
        for entry in listing:
            entries += 1
            if entries > MAX_ENTRIES:
                log.warning("searching %r: stopped after %d entries; narrow the path", root, MAX_ENTRIES)
                return
            if entry.name.startswith("."):
                continue
            try:
                is_directory = entry.is_dir()
            except OSError:
                continue
            if is_directory:
                if depth < max_depth:
                    stack.append((entry.path, depth + 1))
            else:
                yield entry.path
