"""The follower's wake-ups: writes wait out a sleep, names that concern a followed log do not,
and nothing seen is ever dropped, whatever woke the sleep."""

from __future__ import annotations

import time

import pytest

from exporter.logs.watch import Waker


@pytest.fixture
def waker(tmp_path):
    waker = Waker()
    if not waker.uses_inotify:
        pytest.skip("inotify is not available here")
    assert waker.watch(str(tmp_path))
    yield waker
    waker.close()


def test_writes_wait_out_a_sleep_and_are_kept_for_the_next_wait(tmp_path, waker):
    log = tmp_path / "train.log"
    log.write_text("")
    waker.wait(0)  # the creation, taken
    log.write_text("step 1\n")
    started = time.monotonic()
    assert waker.sleep(0.3, lambda path: True) is False  # a write does not end the sleep
    assert time.monotonic() - started >= 0.25
    assert str(log) in waker.wait(0).paths


def test_a_rotation_ends_a_sleep_at_once_and_other_names_do_not(tmp_path, waker):
    log = tmp_path / "train.log"
    log.write_text("x\n")
    waker.wait(0)
    (tmp_path / "other.txt").write_text("")
    started = time.monotonic()
    assert waker.sleep(0.3, lambda path: path.startswith(str(log))) is False
    assert time.monotonic() - started >= 0.25
    log.rename(tmp_path / "train.log.1")
    assert waker.sleep(5, lambda path: path.startswith(str(log))) is True
    changes = waker.wait(0)
    assert {str(log), str(tmp_path / "train.log.1"), str(tmp_path / "other.txt")} <= changes.named


def test_names_that_come_with_an_interrupt_are_not_lost(tmp_path, waker):
    """A scrape's catch-up interrupts the sleep; a log deleted at that moment must still be
    among the changes the follower takes next."""
    log = tmp_path / "train.log"
    log.write_text("x\n")
    waker.wait(0)
    log.unlink()
    waker.interrupt()
    time.sleep(0.05)  # both the interrupt and the deletion are waiting now
    assert waker.sleep(5, lambda path: True) is False  # the interrupt ended it
    assert str(log) in waker.wait(0).named
