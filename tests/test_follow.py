"""The follower and line splitter against everything a real log file does."""

from __future__ import annotations

import os
import shutil

from exporter.logs import follow
from exporter.logs.envelopes import Envelopes
from exporter.logs.follow import Data, EndOfFile, FileFollower, Reset
from exporter.logs.lines import LineSplitter


class Tail:
    """Follower, splitter and envelopes: what the readers do, minus the parsing."""

    def __init__(self, path, max_line_bytes=1 << 20):
        self.follower = FileFollower(str(path))
        self.splitter = LineSplitter(max_line_bytes)
        self.envelopes = Envelopes(max_line_bytes)
        self.lines: list[str] = []
        self.resets: list[str] = []

    def payloads(self, lines: list[str]) -> list[str]:
        return [payload for line in lines for payload in self.envelopes.unwrap(line)]

    def poll(self) -> list[str]:
        before = len(self.lines)
        for item in self.follower.poll():
            if isinstance(item, Data):
                self.lines += self.payloads(self.splitter.feed(item.data))
            elif isinstance(item, EndOfFile):
                self.lines += self.payloads(self.splitter.flush())
            elif isinstance(item, Reset):
                self.resets.append(item.reason)
                self.splitter = LineSplitter(self.splitter.max_line_bytes)
        return self.lines[before:]


def write(path, text, mode="a"):
    with open(path, mode, encoding="utf-8") as handle:
        handle.write(text)


def numbered(start, stop):
    return "".join(f"line {i}\n" for i in range(start, stop))


def expected(start, stop):
    return [f"line {i}" for i in range(start, stop)]


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "train.log"
    tail = Tail(path)
    assert tail.poll() == []
    assert not tail.follower.exists
    write(path, numbered(0, 3))
    assert tail.poll() == expected(0, 3)
    assert tail.follower.exists


def test_partial_last_line_waits_for_its_end(tmp_path):
    path = tmp_path / "train.log"
    write(path, "line 0\n{'loss': 2.")
    tail = Tail(path)
    assert tail.poll() == ["line 0"]
    write(path, "31}\n")
    assert tail.poll() == ["{'loss': 2.31}"]


def test_rotation_by_rename_loses_nothing(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 100))
    tail = Tail(path)
    assert tail.poll() == expected(0, 100)
    # The writer appends after our last look, then the file is rotated and a new one begun.
    write(path, numbered(100, 150) + "line 150 unterminated")
    os.rename(path, tmp_path / "train.log.1")
    write(path, numbered(151, 200))
    got = tail.poll()
    assert got == expected(100, 150) + ["line 150 unterminated"] + expected(151, 200)
    assert tail.resets == []  # a rotation continues the log; it is not a restart


def test_a_log_renamed_away_is_read_on_until_its_successor_appears(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 10))
    tail = Tail(path)
    assert tail.poll() == expected(0, 10)
    # The kubelet renames the log and asks the runtime to reopen it; until the runtime does, the
    # path is empty and the runtime writes on into the renamed file. A look in that moment must
    # not let go of the file.
    rotated = tmp_path / "train.log.20261201-100000"
    os.rename(path, rotated)
    assert tail.poll() == []
    write(rotated, numbered(10, 12))
    write(path, numbered(12, 14))
    assert tail.poll() == expected(10, 14)


def test_a_deleted_log_is_let_go_once_it_stayed_away(tmp_path, monkeypatch):
    path = tmp_path / "train.log"
    write(path, numbered(0, 3) + "last words")
    tail = Tail(path)
    assert tail.poll() == expected(0, 3)
    os.unlink(path)
    assert tail.poll() == [] and tail.follower.is_open  # it may be a rotation: held a while
    monkeypatch.setattr(follow, "GONE_GRACE_SECONDS", 0.0)
    assert tail.poll() == ["last words"]  # its unfinished last line is complete
    assert not tail.follower.is_open  # the descriptor goes: the disk space is freed


def test_copy_truncate_restarts_at_the_top(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 50))
    tail = Tail(path)
    tail.poll()
    # logrotate's copytruncate: copy away, truncate in place, the writer continues.
    os.truncate(path, 0)
    assert tail.poll() == []
    write(path, numbered(50, 60))
    assert tail.poll() == expected(50, 60)
    assert tail.resets == ["truncated"]


def test_truncated_then_refilled_past_old_offset_is_seen_as_rewritten(tmp_path):
    path = tmp_path / "metrics.csv"
    write(path, "step,loss\n0,2.0\n1,1.9\n")
    tail = Tail(path)
    assert tail.poll() == ["step,loss", "0,2.0", "1,1.9"]
    # Lightning's CSVLogger rewrites the whole file with a new header when a key appears.
    write(path, "lr,step,loss\n,0,2.0\n,1,1.9\n0.1,2,1.8\n", mode="w")
    assert tail.poll() == ["lr,step,loss", ",0,2.0", ",1,1.9", "0.1,2,1.8"]
    assert tail.resets == ["rewritten"]


def test_deleted_then_recreated(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 5))
    tail = Tail(path)
    tail.poll()
    os.unlink(path)
    assert tail.poll() == []
    write(path, numbered(5, 9))
    assert tail.poll() == expected(5, 9)


def test_symlink_switched_to_a_new_target(tmp_path):
    first, second, link = tmp_path / "run1.log", tmp_path / "run2.log", tmp_path / "latest.log"
    write(first, numbered(0, 3))
    write(second, numbered(3, 6))
    link.symlink_to(first)
    tail = Tail(link)
    assert tail.poll() == expected(0, 3)
    tmp_link = tmp_path / "tmp.link"
    tmp_link.symlink_to(second)
    os.replace(tmp_link, link)
    assert tail.poll() == expected(3, 6)


def test_long_lines_are_dropped_and_counted(tmp_path):
    path = tmp_path / "train.log"
    write(path, "before\n" + "x" * 5000 + "\nafter\n")
    tail = Tail(path, max_line_bytes=1024)
    assert tail.poll() == ["before", "after"]
    assert tail.splitter.too_long == 1


def test_long_line_arriving_in_pieces(tmp_path):
    path = tmp_path / "train.log"
    tail = Tail(path, max_line_bytes=1024)
    write(path, "a" * 800)
    assert tail.poll() == []
    write(path, "a" * 800)  # now over the cap with no end in sight: dropped, memory freed
    assert tail.poll() == []
    assert tail.splitter._tail == b""
    write(path, "a" * 800 + "\nnext\n")
    assert tail.poll() == ["next"]
    assert tail.splitter.too_long == 1


def test_invalid_utf8_and_nul_bytes(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b"ok \xff\xfe line\n\x00\x00{'loss': 1.0}\x00\n")
    assert Tail(path).poll() == ["ok \ufffd\ufffd line", "{'loss': 1.0}"]


def test_carriage_returns_split_progress_bars_from_log_lines(tmp_path):
    path = tmp_path / "train.log"
    path.write_bytes(b" 10%|#    | 10/100\r 11%|#    | 11/100\r                \r{'loss': 2.3}\r\n 12%|#  | 12/100")
    tail = Tail(path)
    assert tail.poll() == ["10%|#    | 10/100", "11%|#    | 11/100", "{'loss': 2.3}"]


def test_rename_rotation_under_repeated_appends_counts_every_line(tmp_path):
    path = tmp_path / "train.log"
    tail = Tail(path)
    written = 0
    for rotation in range(5):
        for _ in range(3):
            write(path, numbered(written, written + 37))
            written += 37
            tail.poll()
        write(path, numbered(written, written + 11))
        written += 11
        os.rename(path, tmp_path / f"train.log.{rotation}")
    tail.poll()
    assert tail.lines == expected(0, written)


def test_copy_truncate_finishes_the_lines_not_yet_read_from_the_copy(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 10))
    tail = Tail(path)
    tail.poll()
    write(path, numbered(10, 20))  # written before the copy, not read yet
    shutil.copyfile(path, tmp_path / "train.log.1")
    os.truncate(path, 0)
    write(path, numbered(20, 25))
    tail.poll()
    assert tail.lines == expected(0, 25)
    assert tail.resets == ["truncated"]


def test_copy_truncate_refilled_past_the_offset_finishes_from_the_copy_too(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 10))
    tail = Tail(path)
    tail.poll()
    write(path, numbered(10, 20))
    shutil.copyfile(path, tmp_path / "train.log-20240501")
    (tmp_path / "train.log.2").write_text(numbered(0, 5) + "something else\n" * 40)  # an older, other file
    os.truncate(path, 0)
    write(path, numbered(20, 60))  # the writer refills it past our offset before the next poll
    tail.poll()
    assert tail.lines == expected(0, 60)
    assert tail.resets == ["rewritten"]


def test_truncation_without_a_copy_reads_no_stranger(tmp_path):
    path = tmp_path / "train.log"
    write(path, numbered(0, 200))
    tail = Tail(path)
    tail.poll()
    write(path, numbered(200, 210))
    # Same head, but not the bytes before our offset: another file, not our copy.
    (tmp_path / "train.log.bak").write_text(numbered(0, 100) + "changed\n" + numbered(101, 300))
    (tmp_path / "train.log.1.gz").write_bytes(path.read_bytes())  # compressed copies are not read
    os.truncate(path, 0)
    write(path, numbered(300, 302))
    tail.poll()
    assert tail.lines == expected(0, 200) + expected(300, 302)
