"""HostCollector and ProcessCollector against this machine and real child processes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.hardware import cgroup, host as host_module, process as process_module
from exporter.hardware.host import HostCollector
from exporter.hardware.process import ProcessCollector

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20

# A stand-in trainer driven over stdin: "alloc" holds 200 MiB more (every page touched, so it is
# resident), "spawn" starts a worker child, "exit" ends it. It answers each command with "done".
TRAINER = textwrap.dedent("""
    import subprocess, sys
    held = []
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "alloc":
            block = bytearray(200 * 2**20)
            block[::4096] = b"\\x01" * len(range(0, len(block), 4096))
            held.append(block)
        elif command == "spawn":
            held.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                         stdin=subprocess.PIPE))
        elif command == "exit":
            break
        print("done", flush=True)
""")


def scrape(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(families: dict, sample_name: str, **labels: str) -> list[float]:
    family = families.get(sample_name[: -len("_total")] if sample_name.endswith("_total") else sample_name)
    if family is None:
        return []
    return [s.value for s in family.samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, sample_name: str, **labels: str) -> float:
    found = values(families, sample_name, **labels)
    assert len(found) == 1, f"{sample_name}{labels}: {found}"
    return found[0]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
    return result


class Trainer:
    def __init__(self, marker: str):
        self.proc = subprocess.Popen([sys.executable, "-c", TRAINER, marker], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if command != "exit":
            assert self.proc.stdout.readline().strip() == "done"

    def exit(self) -> None:
        self.send("exit")
        self.proc.wait(timeout=10)  # reaped: no zombie left for discovery to see

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def trainers():
    started: list[Trainer] = []

    def start(marker: str) -> Trainer:
        started.append(Trainer(marker))
        return started[-1]

    try:
        yield start
    finally:
        for trainer in started:
            trainer.kill()


def new_marker() -> str:
    return f"train-marker-{uuid.uuid4().hex}"


# ---------------------------------------------------------------- host
def test_host_readings_match_this_machine(tmp_path):
    missing = str(tmp_path / "does-not-exist")
    collector = HostCollector(filesystem_paths=[str(tmp_path), "/", missing])
    fams = scrape(collector)
    assert value(fams, "training_host_memory_total_bytes") == psutil.virtual_memory().total
    available = value(fams, "training_host_memory_available_bytes")
    assert 0 < available <= psutil.virtual_memory().total
    assert value(fams, "training_host_swap_total_bytes") == psutil.swap_memory().total
    assert value(fams, "training_host_cpus") == psutil.cpu_count()
    assert fams["training_host_cpu_seconds"].type == "counter"
    modes = {s.labels["mode"]: s.value for s in fams["training_host_cpu_seconds"].samples}
    assert {"user", "system", "idle"} <= set(modes) and modes["idle"] > 0
    assert all(set(s.labels) == {"mode"} for s in fams["training_host_cpu_seconds"].samples)
    assert value(fams, "training_host_load1") == pytest.approx(os.getloadavg()[0], abs=2.0)
    nics = {s.labels["device"] for s in fams["training_host_network_receive_bytes"].samples}
    assert "lo" not in nics and nics <= set(psutil.net_io_counters(pernic=True))
    for s in getattr(fams.get("training_host_disk_read_bytes"), "samples", []):
        assert Path("/sys/block", s.labels["device"]).exists()  # whole disks, not partitions
    assert value(fams, "training_host_filesystem_size_bytes", path=str(tmp_path)) == psutil.disk_usage(str(tmp_path)).total
    assert value(fams, "training_host_filesystem_free_bytes", path="/") > 0
    assert values(fams, "training_host_filesystem_size_bytes", path=missing) == []


def test_counters_do_not_go_backwards_between_scrapes():
    collector = HostCollector()
    before = scrape(collector)
    sum(range(2_000_000))  # burn a little CPU
    after = scrape(collector)
    for name in ("training_host_cpu_seconds_total", "training_host_network_receive_bytes_total"):
        assert sum(values(after, name)) >= sum(values(before, name))


def test_per_cpu_adds_a_cpu_label():
    fams = scrape(HostCollector(per_cpu=True))
    cpus = {s.labels["cpu"] for s in fams["training_host_cpu_seconds"].samples}
    assert cpus == {str(i) for i in range(psutil.cpu_count())}


@pytest.mark.skipif(not Path("/sys/fs/cgroup").exists(), reason="no cgroup filesystem on this machine")
def test_cgroup_readings_of_this_container():
    memory = cgroup.read_memory()
    if memory is None or memory.usage is None:
        pytest.skip("no memory cgroup readable here")
    fams = scrape(HostCollector())
    usage = value(fams, "training_container_memory_usage_bytes")
    assert usage > 0 and usage == pytest.approx(memory.usage, rel=0.5)
    # Read the files independently of the module to check the limit handling.
    paths = cgroup.own_cgroups()
    if memory.version == 2:
        raw = Path("/sys/fs/cgroup", paths[""].lstrip("/"), "memory.max")
        raw = raw if raw.exists() else Path("/sys/fs/cgroup/memory.max")
        unlimited = not raw.exists() or raw.read_text().strip() == "max"
    else:
        raw = Path("/sys/fs/cgroup/memory", paths["memory"].lstrip("/"), "memory.limit_in_bytes")
        raw = raw if raw.exists() else Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        unlimited = int(raw.read_text()) >= 2**60
    if unlimited:
        assert values(fams, "training_container_memory_limit_bytes") == []
    else:
        assert value(fams, "training_container_memory_limit_bytes") == memory.limit
    if memory.oom_kills is not None:
        assert fams["training_container_oom_kills"].type == "counter"


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


def test_cgroup_v2_files_and_the_own_path(tmp_path):
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("0::/kubepods/pod1/trainer\n")
    root = tmp_path / "cg"
    write_tree(root, {"cgroup.controllers": "cpu memory\n",
                      "kubepods/pod1/trainer/memory.max": "8589934592\n",
                      "kubepods/pod1/trainer/memory.current": "1048576\n",
                      "kubepods/pod1/trainer/memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n"})
    assert cgroup.read_memory(str(root), str(proc_cgroup)) == cgroup.CgroupMemory(2, 8 * 2**30, MIB, 2)
    (root / "kubepods/pod1/trainer/memory.max").write_text("max\n")
    assert cgroup.read_memory(str(root), str(proc_cgroup)).limit is None
    # With a cgroup namespace the path reads "/" and the files sit at the mount root.
    proc_cgroup.write_text("0::/\n")
    write_tree(root, {"memory.max": "max\n", "memory.current": "42\n"})
    assert cgroup.read_memory(str(root), str(proc_cgroup)) == cgroup.CgroupMemory(2, None, 42, None)


def test_cgroup_v1_no_limit_value_is_no_limit(tmp_path):
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    root = tmp_path / "cg"
    write_tree(root, {"memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
                      "memory/docker/abc/memory.usage_in_bytes": "5000\n",
                      "memory/docker/abc/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"})
    assert cgroup.read_memory(str(root), str(proc_cgroup)) == cgroup.CgroupMemory(1, None, 5000, 3)
    (root / "memory/docker/abc/memory.limit_in_bytes").write_text("2147483648\n")
    (root / "memory/docker/abc/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # Linux < 4.13
    assert cgroup.read_memory(str(root), str(proc_cgroup)) == cgroup.CgroupMemory(1, 2**31, 5000, None)
    fams = scrape(HostCollector(cgroup_root=str(tmp_path / "nowhere")))  # no cgroup fs: just omitted
    assert values(fams, "training_container_memory_usage_bytes") == []
    assert values(fams, "training_host_read_errors_total") == []


def test_the_cgroup_is_found_once_and_read_at_every_scrape(tmp_path):
    # The readings change between scrapes; when the process moves to another cgroup, the old
    # files go away (nothing is reported) and the new ones are found.
    proc_cgroup, root = tmp_path / "self-cgroup", tmp_path / "cg"
    proc_cgroup.write_text("0::/a\n")
    write_tree(root, {"cgroup.controllers": "memory\n", "a/memory.max": "4096\n", "a/memory.current": "10\n"})
    collector = HostCollector(cgroup_root=str(root), proc_cgroup=str(proc_cgroup))
    assert value(scrape(collector), "training_container_memory_usage_bytes") == 10
    (root / "a/memory.current").write_text("20\n")
    assert value(scrape(collector), "training_container_memory_usage_bytes") == 20
    proc_cgroup.write_text("0::/b\n")
    (root / "a/memory.current").rename(root / "a/gone")
    write_tree(root, {"b/memory.max": "4096\n", "b/memory.current": "30\n"})
    fams = scrape(collector)
    assert values(fams, "training_container_memory_usage_bytes") == [] and values(fams, "training_host_read_errors_total") == []
    assert value(scrape(collector), "training_container_memory_usage_bytes") == 30


def test_memory_from_meminfo_and_from_psutil_without_it(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
                       "Buffers:          100 kB\nSwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n")
    assert host_module._meminfo(str(meminfo)) == {b"MemTotal": 16000000 * 1024, b"MemAvailable": 8000000 * 1024,
                                                   b"SwapTotal": 2000000 * 1024, b"SwapFree": 1500000 * 1024}
    assert host_module._meminfo(str(tmp_path / "missing")) is None
    # A kernel before 3.14 has no MemAvailable: psutil works out an estimate instead.
    monkeypatch.setattr(host_module, "_meminfo", lambda: {b"MemTotal": 1, b"SwapTotal": 2, b"SwapFree": 1})
    fams = scrape(HostCollector())
    assert value(fams, "training_host_memory_total_bytes") == psutil.virtual_memory().total
    assert value(fams, "training_host_swap_used_bytes") == psutil.swap_memory().used


# Written as kernels write them: a 5.5+ disk line (20 fields), a 4.18 one (18), a 2.6 one (14),
# a 2.6 partition (7, psutil's only other case), loop devices; interfaces padded to the colon.
DISKSTATS = """\
   7       0 loop0 98 0 2490 26 0 0 0 0 0 52 26 0 0 0 0 0 0
 259       0 nvme0n1 1954332 584611 171830418 440541 3346402 2791219 395219264 4029745 0 1652416 4516012 0 0 0 0 43233 45725
 259       1 nvme0n1p1 1953990 584611 171818210 440480 3346400 2791219 395219264 4029744 0 1652244 4470224 0 0 0 0 0 0
   8       0 sda 75 0 3648 35 1 0 8 0 0 64 35 0 0 0 0
   8      16 sdb 2116 310 84802 1254 10 3 64 11 0 1088 1265
   8      17 sdb1 2000 80000 9 72
 254       0 vda 435161 22081 16136522 381873 27390 81836 20507688 35270 0 31524 421043 44680 58 10823664 3839 1649 61
"""
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 4369552322 1977283    0    0    0     0          0         0 4369552322 1977283    0    0    0     0       0          0
  eth0: 147089317    5203    0    0    0     0          0         0   383384    3913    0    0    0     0       0          0
veth1a2b3c4:18446744073709551615 5 0 0 0 0 0 0 7 1 0 0 0 0 0 0
"""


def test_disk_and_network_counters_read_as_psutil_reads_them(tmp_path, monkeypatch):
    (tmp_path / "net").mkdir()
    (tmp_path / "diskstats").write_text(DISKSTATS)
    (tmp_path / "net" / "dev").write_text(NET_DEV)
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))
    psutil_disks = {(d, io.read_bytes, io.write_bytes)
                    for d, io in psutil.disk_io_counters(perdisk=True, nowrap=False).items()}
    disks = host_module._disk_bytes(str(tmp_path / "diskstats"))
    assert set(disks) == psutil_disks - {("sdb1", 80000 * 512, 72 * 512)}  # less the 2.6 partition
    assert ("nvme0n1", 171830418 * 512, 395219264 * 512) in disks
    psutil_nics = {(n, io.bytes_recv, io.bytes_sent) for n, io in psutil.net_io_counters(pernic=True, nowrap=False).items()}
    nics = host_module._network_bytes(str(tmp_path / "net" / "dev"))
    assert len(nics) == 3 and set(nics) == psutil_nics
    assert ("veth1a2b3c4", 2**64 - 1, 7) in nics
    # Without /proc (another OS), psutil reads them its own way.
    assert set(host_module._disk_bytes(str(tmp_path / "missing"))) == psutil_disks
    assert set(host_module._network_bytes(str(tmp_path / "missing"))) == psutil_nics


def test_a_failing_group_does_not_hide_the_others(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("no /proc/net/dev")

    monkeypatch.setattr(host_module, "_network_bytes", broken)
    collector = HostCollector()
    scrape(collector)
    fams = scrape(collector)
    assert values(fams, "training_host_network_receive_bytes_total") == []
    assert value(fams, "training_host_memory_total_bytes") == psutil.virtual_memory().total
    assert value(fams, "training_host_read_errors_total", group="network") == 2
    assert len([r for r in caplog.records if "network" in r.getMessage()]) == 1


def test_a_hanging_filesystem_check_neither_slows_scrapes_nor_reports_stale_numbers(monkeypatch, tmp_path):
    collector = HostCollector(filesystem_paths=[str(tmp_path)])
    collector.filesystem_interval = 0.1
    collector.start()
    try:
        wait_for(lambda: values(scrape(collector), "training_host_filesystem_size_bytes", path=str(tmp_path)))
        real_usage = psutil.disk_usage
        monkeypatch.setattr(psutil, "disk_usage", lambda path: (time.sleep(2), real_usage(path))[1])
        time.sleep(0.5)  # the next check is stuck; the last result is now older than 3 intervals
        started = time.perf_counter()
        fams = scrape(collector)
        assert time.perf_counter() - started < 0.5
        assert values(fams, "training_host_filesystem_size_bytes") == []
    finally:
        collector.stop()


def test_every_host_and_process_metric_is_documented():
    doc = (REPO / "docs" / "hardware.md").read_text()
    missing = [n for n in [*host_module.SPECS, *process_module.SPECS] if f"`{n}`" not in doc]
    assert not missing


# ---------------------------------------------------------------- process
def test_pid_file_rss_growth_children_exit_and_restart(tmp_path):
    pid_file = tmp_path / "train.pid"
    collector = ProcessCollector(pid_file=str(pid_file))
    assert value(scrape(collector), "training_process_up") == 0  # no PID file yet
    with trainers() as start:
        first = start(new_marker())
        pid_file.write_text(f"{first.pid}\n")
        fams = scrape(collector)
        assert value(fams, "training_process_up") == 1
        assert value(fams, "training_process_info", pid=str(first.pid), source="pid_file") == 1
        assert value(fams, "training_process_start_time_seconds") == pytest.approx(psutil.Process(first.pid).create_time())
        assert value(fams, "training_process_threads") >= 1
        assert value(fams, "training_process_open_fds") >= 3
        assert fams["training_process_cpu_seconds"].type == "counter"
        rss_before = value(fams, "training_process_resident_memory_bytes")
        assert value(fams, "training_process_children") == 0

        first.send("alloc")
        rss_after = value(scrape(collector), "training_process_resident_memory_bytes")
        assert rss_after - rss_before >= 150 * MIB, (rss_before, rss_after)

        first.send("spawn")
        # The worker is found as soon as it is forked; its interpreter takes a moment to load
        # (just after exec it holds under 1 MiB), so the reading is awaited, not taken at once.
        fams = wait_for(lambda: (f := scrape(collector)) and value(f, "training_process_children") == 1
                        and values(f, "training_process_children_resident_memory_bytes")[0] > MIB and f)
        assert value(fams, "training_process_children_resident_memory_bytes") > MIB

        first.exit()
        fams = scrape(collector)
        assert value(fams, "training_process_up") == 0  # reported as gone, not silently missing
        assert values(fams, "training_process_resident_memory_bytes") == []

        second = start(new_marker())
        pid_file.write_text(f"{second.pid}\n")
        fams = scrape(collector)
        assert value(fams, "training_process_up") == 1
        assert value(fams, "training_process_info", pid=str(second.pid)) == 1
        assert value(fams, "training_process_children") == 0


def test_cmdline_pattern_picks_the_oldest_match_and_follows_a_restart():
    marker = new_marker()
    collector = ProcessCollector(cmdline_pattern=re.escape(marker))
    with trainers() as start:
        older = start(marker)
        time.sleep(0.05)  # distinct create times
        start(marker)
        fams = scrape(collector)
        assert value(fams, "training_process_info", pid=str(older.pid), source="cmdline") == 1
        older.send("alloc")
        assert value(scrape(collector), "training_process_resident_memory_bytes") >= 200 * MIB
        older.exit()
        # The remaining match is picked up by the next collect.
        fams = scrape(collector)
        assert value(fams, "training_process_up") == 1
        assert values(fams, "training_process_info", pid=str(older.pid)) == []


def test_cmdline_pattern_never_matches_the_exporter_or_its_launcher():
    marker = new_marker()
    exporter_code = textwrap.dedent(f"""
        import sys
        from exporter.hardware.process import ProcessCollector
        collector = ProcessCollector(cmdline_pattern={marker!r})
        sys.stdin.readline()
        for family in collector.collect():
            for sample in family.samples:
                if sample.name == "training_process_info":
                    print(sample.labels["pid"], flush=True)
        print("end", flush=True)
    """)
    # Started first (so the oldest matches) through a wrapper, as `sh -c "..."` or `timeout` would
    # start it: both the wrapper and the exporter carry the marker in their command lines.
    wrapper = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:-1]))"
    exporter = subprocess.Popen([sys.executable, "-c", wrapper, sys.executable, "-c", exporter_code, marker, marker],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(0.3)  # the wrapped exporter is running
        with trainers() as start:
            trainer = start(marker)
            exporter.stdin.write("go\n")
            exporter.stdin.flush()
            assert exporter.stdout.readline().strip() == str(trainer.pid)
    finally:
        exporter.kill()
        exporter.wait()


def test_found_as_a_gpu_process_and_priorities(tmp_path):
    pid_file = tmp_path / "train.pid"
    with trainers() as start:
        on_gpu, by_pattern = start(new_marker()), start(marker := new_marker())
        collector = ProcessCollector(gpu_pids=lambda: {on_gpu.pid, 4_000_000})
        assert value(scrape(collector), "training_process_info", pid=str(on_gpu.pid), source="gpu") == 1

        collector = ProcessCollector(pid_file=str(pid_file), cmdline_pattern=re.escape(marker),
                                     gpu_pids=lambda: {on_gpu.pid})
        assert value(scrape(collector), "training_process_info", source="cmdline") == 1  # no PID file yet
        pid_file.write_text(str(on_gpu.pid))
        assert value(scrape(collector), "training_process_info", pid=str(on_gpu.pid), source="pid_file") == 1
        pid_file.unlink()
        assert value(scrape(collector), "training_process_info", pid=str(by_pattern.pid), source="cmdline") == 1
        by_pattern.exit()
        assert value(scrape(collector), "training_process_info", pid=str(on_gpu.pid), source="gpu") == 1


def test_gpu_pids_that_cannot_be_seen_are_not_looked_up_again_until_they_change():
    # NVML's PIDs from another PID namespace: looked up once, not on every scrape.
    looked_up = []
    gpu_pids = {4_000_000, 4_000_001}
    with trainers() as start:
        trainer = start(new_marker())
        collector = ProcessCollector(gpu_pids=lambda: set(gpu_pids))
        look_up = collector.finder._process
        collector.finder._process = lambda pid: looked_up.append(pid) or look_up(pid)
        for _ in range(3):
            assert value(scrape(collector), "training_process_up") == 0
        assert sorted(looked_up) == [4_000_000, 4_000_001]
        gpu_pids.add(trainer.pid)  # the set changed: looked at again, and found
        assert value(scrape(collector), "training_process_info", pid=str(trainer.pid), source="gpu") == 1


def test_nothing_to_follow_is_up_zero_and_a_bad_regex_is_a_value_error(tmp_path):
    fams = scrape(ProcessCollector(pid_file=str(tmp_path / "missing.pid")))
    assert value(fams, "training_process_up") == 0
    assert set(fams) == {"training_process_up"}
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert value(scrape(ProcessCollector(pid_file=str(tmp_path / "garbage.pid"))), "training_process_up") == 0
    with pytest.raises(ValueError) as info:
        ProcessCollector(cmdline_pattern="train(")
    assert "\n" not in str(info.value) and "train(" in str(info.value)
