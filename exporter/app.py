"""Wiring, the one place where the parts meet: the log follower feeds the training state, the
collectors read it and the hardware, the server serves the registry; and the serve loop."""

from __future__ import annotations

import gc
import logging
import threading
import time

from . import runtime
from .collector_base import Collector
from .config import Config
from .guard.collector import GuardCollector
from .logs.pods import PodLogs
from .logs.sources import LogFollower, LogSpec
from .registry import build_registry
from .server import MetricsServer
from .training.collector import TrainingCollector
from .training.states import TrainingStates
from .training.vocabulary import Vocabulary
from .webconfig import load_web_config

log = logging.getLogger(__name__)

# SIGTERM must end the process within a second; this is what stopping may take of it.
STOP_SECONDS = 0.5
# How long a scrape waits for the lines written before it to be read: enough for a poll
# interval's worth of lines at thousands of lines a second; a backlog beyond it is read later.
CATCH_UP_SECONDS = 0.25


def log_specs(config: Config) -> list[LogSpec]:
    specs = [LogSpec(path=entry.path, format=entry.format, source=entry.source,
                     patterns=tuple((p.pattern, p.kind) for p in entry.patterns))
             for entry in config.logs]
    pods = config.pods
    if pods is not None:
        specs.append(PodLogs(path=pods.path, format=pods.format, namespaces=tuple(pods.namespaces),
                             pod_pattern=pods.pod_pattern, containers=tuple(pods.containers)))
    return specs


class LogReading:
    """The reading path, wired: a follower whose records feed the training states."""

    def __init__(self, config: Config, keep_history: bool = False) -> None:
        self.states = TrainingStates(config.signals, Vocabulary(config.vocabulary), keep_history)
        self.follower = LogFollower(
            log_specs(config), self.states,
            max_line_bytes=config.follow.max_line_bytes,
            poll_interval=config.follow.poll_interval_seconds,
            rescan_interval=config.follow.rescan_interval_seconds,
            retire_after=config.follow.retire_after_seconds,
        )

    def read_to_end(self) -> None:
        self.follower.read_to_end()

    def catch_up(self) -> None:
        """Read what the logs gained up to now: before a scrape, before a look of the guard."""
        self.follower.catch_up(CATCH_UP_SECONDS)


def make_collectors(config: Config, reading: LogReading) -> list[Collector]:
    enabled = config.collectors
    collectors: list[Collector] = []
    pods = None
    if config.pods is not None:
        from .hardware.pod_processes import ProcessPods

        pods = ProcessPods(config.pods.path, config.pods.procfs)
    if enabled.get("training", True):
        collectors.append(TrainingCollector(reading.states, reading.follower.files, catch_up=reading.catch_up))
    gpu = None
    if enabled.get("gpu", True):
        from .hardware.gpu import GpuCollector

        gpu = GpuCollector(poll_interval=config.gpu.poll_interval_seconds, pods=pods)
        collectors.append(gpu)
    if enabled.get("host", True):
        from .hardware.host import HostCollector

        collectors.append(HostCollector(filesystem_paths=config.host.filesystem_paths, per_cpu=config.host.per_cpu))
    if not enabled.get("process", True) and config.guard is None:
        return collectors
    from .hardware.process import ProcessCollector, ProcessFinder

    # One finder for the process collector and the guard: they must mean the same process.
    finder = ProcessFinder(
        pid_file=config.process.pid_file,
        cmdline_pattern=config.process.cmdline_pattern,
        gpu_pids=gpu.gpu_pids if (gpu is not None and config.process.from_gpu) else None,
    )
    if enabled.get("process", True):
        collectors.append(ProcessCollector(finder=finder, pods=pods))
    if config.guard is not None:
        from .guard.core import Guard

        training = enabled.get("training", True)
        ready = (lambda: reading.follower.ready) if training else (lambda: True)
        collectors.append(GuardCollector(Guard(config.guard, config.signals, reading.states, finder, ready,
                                               catch_up=reading.catch_up if training else None)))
    return collectors


class Exporter:
    """The running exporter: collectors started, the HTTP server listening."""

    def __init__(self, config: Config) -> None:
        self.reading = LogReading(config)
        self.collectors = make_collectors(config, self.reading)
        self.training_enabled = config.collectors.get("training", True)
        self.registry = build_registry(self.collectors)
        security = load_web_config(config.web.config_file) if config.web.config_file else None
        follower = self.reading.follower
        guard = next((c.guard for c in self.collectors if isinstance(c, GuardCollector)), None)
        self.server = MetricsServer(config.web.listen_address, self.registry,
                                    is_ready=(lambda: follower.ready) if self.training_enabled else (lambda: True),
                                    security=security, guard_webhook=guard.webhook if guard is not None else None)

    def start(self) -> None:
        if self.training_enabled:
            self.reading.follower.start()
        for collector in self.collectors:
            collector.start()
        self.server.start()

    def stop(self) -> None:
        """Stop the server and every collector at the same time, waiting STOP_SECONDS at most.

        One after the other, their waits add up (the server's poll, the GPU thread's NVML event
        wait, a backlog being read). Whatever is still busy at the deadline is left to end with
        the process: every thread is a daemon and nothing is written that could be left torn.
        """
        parts = [("http", self.server.stop), ("logs", self.reading.follower.stop)]
        parts += [(c.name, c.stop) for c in self.collectors]
        threads = [threading.Thread(target=_stop_part, args=part, name=f"stop-{part[0]}", daemon=True)
                   for part in parts]
        deadline = time.monotonic() + STOP_SECONDS
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [thread.name[len("stop-"):] for thread in threads if thread.is_alive()]
        if late:
            log.info("not waiting any longer for: %s", ", ".join(late))


def _stop_part(name: str, stop) -> None:
    try:
        stop()
    except Exception:  # noqa: BLE001 - shutting down regardless
        log.exception("error stopping %s", name)


def serve(config: Config, on_started=None) -> int:
    """Run until SIGTERM or SIGINT; stop within about a second. Other signals: ``runtime.py``."""
    stopping = threading.Event()
    runtime.prepare(stop=stopping.set)
    exporter = Exporter(config)
    exporter.start()
    # What exists now (modules, collectors, the server) lives as long as the process. Frozen,
    # it is left out of the collector's full passes, which otherwise walk it all every few dozen
    # scrapes: 10 ms each, the slowest 1% of scrapes.
    gc.collect()
    gc.freeze()
    host, port = exporter.server.httpd.server_address[:2]
    host = f"[{host}]" if ":" in host else host or "0.0.0.0"
    scheme = "https" if exporter.server.httpd.tls else "http"
    pods = f" and the pods' logs under {config.pods.path}" if config.pods is not None else ""
    log.info("listening on %s://%s:%d; following %d log path(s)%s", scheme, host, port, len(config.logs), pods)
    if on_started is not None:
        on_started(exporter)
    runtime.wait_for(stopping)
    exporter.stop()
    return 0
