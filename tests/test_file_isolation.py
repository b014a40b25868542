"""One bad file costs only itself: real exporter processes against what unlucky users and
attackers put where logs are followed (file names that are not UTF-8, FIFOs and devices, loops
of links, files of one name in many directories, deleted files, unreadable files, files saved by
renaming a new copy over them, huge documents, thousands of files)."""

from __future__ import annotations

import json
import os
import shutil
import time

import psutil
import pytest
import requests

from conftest import ExporterProcess, parse_metrics, value, wait_for
from procs import HW_OFF, rss_mib


def hf_line(loss: float, epoch: float = 0.1) -> str:
    return f"{{'loss': {loss}, 'grad_norm': 1.0, 'learning_rate': 1e-05, 'epoch': {epoch}}}\n"


def jsonl(**values) -> str:
    return json.dumps(values) + "\n"


def series(metrics: dict, name: str) -> dict[frozenset, float]:
    return {labels: number for (metric, labels), number in metrics.items() if metric == name}


def sources(metrics: dict, name: str = "training_log_lines_total") -> set[str]:
    return {dict(labels)["source"] for labels in series(metrics, name)}


def test_a_file_name_that_is_not_utf8_breaks_no_scrape(tmp_path, exporter_process):
    # (1) Every scrape answered 500, GPU and host metrics included, even after the file went.
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "good.log").write_text(hf_line(2.0))
    bad = os.path.join(os.fsencode(runs), b"bad\xff.log")
    with open(bad, "w") as handle:
        handle.write(hf_line(3.0))
    exporter = exporter_process("--log", str(runs / "*.log"), "--no-collector.gpu", "--no-collector.process")
    response = requests.get(exporter.url + "/metrics", timeout=5)
    assert response.status_code == 200
    metrics = parse_metrics(response.text)
    assert value(metrics, "training_loss", source="good.log") == 2.0
    assert value(metrics, "training_loss", source="bad\ufffd.log") == 3.0
    assert any(name.startswith("training_host_") for name, _ in metrics)
    os.remove(bad)
    time.sleep(0.5)
    assert requests.get(exporter.url + "/metrics", timeout=5).status_code == 200


def test_fifos_and_devices_are_refused_without_blocking_anything(tmp_path, exporter_process):
    # (2) A FIFO blocked the follower for good; /dev/zero burned a core.
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    folder = tmp_path / "run"
    folder.mkdir()
    os.mkfifo(folder / "named.log")
    (folder / "train.log").write_text(hf_line(2.5))
    good = tmp_path / "good.log"
    good.write_text(hf_line(1.5))
    exporter = exporter_process("--log", str(fifo), "--log", str(folder), "--log", str(good), "--log", "/dev/zero",
                                *HW_OFF)
    metrics = exporter.metrics()
    assert value(metrics, "training_loss", source="good.log") == 1.5
    assert value(metrics, "training_loss", source="train.log") == 2.5
    for source in ("pipe.log", "named.log", "zero"):
        assert value(metrics, "training_log_up", source=source) == 0, source
        assert value(metrics, "training_log_read_errors_total", source=source, reason="not_regular_file") == 1
    with open(good, "a") as handle:
        handle.write(hf_line(0.5))
    wait_for(lambda: value(exporter.metrics(), "training_loss", source="good.log") == 0.5, 5, "good.log stalled")
    process = psutil.Process(exporter.proc.pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(3)
    assert sum(process.cpu_times()[:2]) - before < 0.5, "reading a device burns the CPU"
    output = exporter.stop()
    assert "pipe.log" in output and "not regular file" in output


def test_loops_of_links_are_walked_once(tmp_path, exporter_process):
    # (3) Two loops under a ** glob: 531 MB and 100% CPU, never ready; one loop: one file followed
    # 41 times, its OOM counted 41 times; latest -> run-2: one file counted under two sources.
    tree = tmp_path / "tree"
    (tree / "run").mkdir(parents=True)
    (tree / "run" / "train.log").write_text(hf_line(2.0) + "torch.OutOfMemoryError: CUDA out of memory. Tried\n")
    os.symlink("..", tree / "run" / "up")
    os.symlink(".", tree / "self")
    runs = tmp_path / "runs"
    (runs / "run-2").mkdir(parents=True)
    (runs / "run-2" / "metrics.log").write_text(hf_line(1.0))
    os.symlink("run-2", runs / "latest")
    other = tmp_path / "other.log"
    other.write_text(hf_line(4.0))
    exporter = exporter_process("--log", str(tree / "**" / "*.log"), "--log", str(runs / "*" / "metrics.log"),
                                "--log", str(other), *HW_OFF)
    metrics = exporter.metrics()
    assert sources(metrics) == {"train.log", "metrics.log", "other.log"}
    assert value(metrics, "training_oom_events_total", source="train.log") == 1
    assert value(metrics, "training_loss", source="other.log") == 4.0
    assert rss_mib(exporter.proc.pid) < 100


def test_files_of_one_name_in_many_directories_are_sources_of_their_own(tmp_path, exporter_process):
    # (4) Two of node1/rank0/train.log, node2/rank0/train.log, node3/rank0/train.log shared a source.
    for node, loss in ((1, 1.0), (2, 2.0), (3, 3.0)):
        folder = tmp_path / f"node{node}" / "rank0"
        folder.mkdir(parents=True)
        text = hf_line(loss) + ("torch.OutOfMemoryError: CUDA out of memory. Tried\n" if node == 3 else "")
        (folder / "train.log").write_text(text)
    exporter = exporter_process("--log", str(tmp_path / "*" / "rank0" / "train.log"), *HW_OFF)
    metrics = exporter.metrics()
    losses = {dict(labels)["source"]: number for labels, number in series(metrics, "training_loss").items()}
    assert losses == {"train.log": 1.0, "rank0/train.log": 2.0, "node3/rank0/train.log": 3.0}
    assert value(metrics, "training_oom_events_total", source="node3/rank0/train.log") == 1
    assert value(metrics, "training_oom_events_total", source="train.log") == 0


def holds(pid: int, path) -> bool:
    """Whether the process has ``path`` open, deleted or not (psutil's open_files() leaves
    deleted files out; a deleted file's descriptor reads "PATH (deleted)")."""
    descriptors = f"/proc/{pid}/fd"
    for fd in os.listdir(descriptors):
        try:
            if os.readlink(os.path.join(descriptors, fd)).startswith(str(path)):
                return True
        except OSError:
            pass  # closed meanwhile
    return False


def test_a_deleted_file_is_let_go_and_its_series_retire(tmp_path, exporter_process):
    # (5) Deleted files kept their descriptors open (disk space not freed), their series for ever.
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "keep.log").write_text(hf_line(1.0))
    doomed = folder / "doomed.log"
    doomed.write_text(hf_line(2.0))
    config = tmp_path / "exporter.yaml"
    config.write_text(f"logs: [{{path: '{folder}/*.log'}}]\nfollow: {{retire_after_seconds: 2}}\n")
    exporter = exporter_process("--config", str(config), *HW_OFF)
    assert value(exporter.metrics(), "training_loss", source="doomed.log") == 2.0
    assert holds(exporter.proc.pid, doomed)
    doomed.unlink()
    wait_for(lambda: not holds(exporter.proc.pid, doomed), 10, "the deleted file is held open")
    wait_for(lambda: "doomed.log" not in sources(exporter.metrics(), "training_loss"), 10, "its series stay")
    assert "doomed.log" not in sources(exporter.metrics())
    assert value(exporter.metrics(), "training_loss", source="keep.log") == 1.0


def test_a_deleted_log_is_let_go_within_seconds_though_its_series_stay(tmp_path, exporter_process):
    # A file gone from its path is held a few seconds (a rotation's writer may write on into it),
    # then let go, long before the source retires with its series (5 minutes by default).
    log = tmp_path / "train.log"
    log.write_text(hf_line(2.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    assert holds(exporter.proc.pid, log)
    log.unlink()
    time.sleep(1)
    assert holds(exporter.proc.pid, log)  # held: it may be a rotation whose new file comes in a moment
    wait_for(lambda: not holds(exporter.proc.pid, log), 15, "the deleted log is held open")
    assert value(exporter.metrics(), "training_loss", source="train.log") == 2.0


def test_an_unreadable_file_says_so(tmp_path):
    # (6) A log of mode 000 reported training_log_up 1, 0 lines, ready, and no error.
    log = tmp_path / "train.log"
    log.write_text(hf_line(2.0))
    log.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # Root reads anything; without these two capabilities it reads as its permissions say.
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    exporter = ExporterProcess(["--log", str(log), *HW_OFF], prefix=prefix)
    try:
        exporter.wait_ready()
        metrics = exporter.metrics()
        assert value(metrics, "training_log_up", source="train.log") == 0
        assert value(metrics, "training_log_read_errors_total", source="train.log", reason="permission_denied") == 1
        log.chmod(0o644)
        wait_for(lambda: value(exporter.metrics(), "training_loss", source="train.log") == 2.0, 10,
                 "not read once readable")
        assert value(exporter.metrics(), "training_log_up", source="train.log") == 1
    finally:
        output = exporter.stop()
    assert "permission denied" in output


def test_a_log_saved_by_renaming_a_new_copy_over_it_is_not_counted_again(tmp_path, exporter_process):
    # (7) 5,000 lines rewritten this way were counted as 2.27 million.
    log = tmp_path / "train.jsonl"
    lines = [jsonl(step=step, loss=1.0) for step in range(1, 5001)]
    log.write_text("".join(lines))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    for step in range(5001, 5006):
        lines.append(jsonl(step=step, loss=0.5))
        partial = tmp_path / "train.jsonl.tmp"
        partial.write_text("".join(lines))
        os.replace(partial, log)
        wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == step, 10,
                 f"step {step} not read")
    metrics = exporter.metrics()
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == 5005
    assert value(metrics, "training_records_total", source="train.jsonl", kind="train") == 5005
    assert value(metrics, "training_log_resets_total", source="train.jsonl", reason="rewritten") == 0


def test_huge_documents_are_refused_and_stall_nothing(tmp_path, exporter_process):
    # (8) A 60 MB hparams.yaml peaked at 1 GB and stalled every other log for 33 s; a 61 MB
    # trainer_state.json peaked at 614 MB with a 4 s stall at every rewrite.
    run = tmp_path / "version_0"
    run.mkdir()
    with open(run / "hparams.yaml", "w") as handle:
        for index in range(2_000_000):
            handle.write(f"key_{index}: {index}\n")
    checkpoint = tmp_path / "output"
    checkpoint.mkdir()
    entry = json.dumps({"loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-5, "epoch": 0.1, "step": 1})
    with open(checkpoint / "trainer_state.json", "w") as handle:
        handle.write('{"log_history": [' + ", ".join([entry] * 600_000) + "]}")
    console = tmp_path / "train.log"
    console.write_text(hf_line(2.0))
    exporter = exporter_process("--log", str(run), "--log", str(checkpoint), "--log", str(console), *HW_OFF)
    metrics = exporter.metrics()
    for source in ("version_0", "output"):
        assert value(metrics, "training_log_up", source=source) == 0
        assert value(metrics, "training_log_read_errors_total", source=source, reason="too_large") == 1
    for loss in (1.5, 1.0, 0.5):
        with open(console, "a") as handle:
            handle.write(hf_line(loss))
        wait_for(lambda: value(exporter.metrics(), "training_loss", source="train.log") == loss, 3,
                 "the console log stalled")
        os.utime(checkpoint / "trainer_state.json")  # "rewritten": looked at again
    assert rss_mib(exporter.proc.pid) < 100


def test_a_write_to_one_of_thousands_of_files_costs_that_file_only(tmp_path, exporter_process):
    # (9) With 5,000 files followed, one file written at 20 lines/s cost 40% of a core.
    folder = tmp_path / "ranks"
    folder.mkdir()
    for index in range(5000):
        (folder / f"rank{index:04d}.log").write_text(hf_line(2.0))
    exporter = exporter_process("--log", str(folder / "*.log"), *HW_OFF)
    assert len(sources(exporter.metrics())) == 5000
    busy = folder / "rank0007.log"
    process = psutil.Process(exporter.proc.pid)
    time.sleep(2)  # past the first rescan after start
    before = sum(process.cpu_times()[:2])
    started = time.monotonic()
    for index in range(120):
        with open(busy, "a") as handle:
            handle.write(hf_line(1.0 + index / 1000))
        time.sleep(0.05)
    used = sum(process.cpu_times()[:2]) - before
    share = used / (time.monotonic() - started)
    # (A scrape of 5,000 sources' series takes a while: asked for at a gentle pace.)
    wait_for(lambda: value(exporter.metrics(), "training_loss", source="rank0007.log") == pytest.approx(1.119), 20,
             "the last line was not read", interval=1.0)
    assert share < 0.15, f"{share:.0%} of a core"
