"""YAML config and command-line flags into typed settings.

Every mistake stops the start with one line that names the file, the key and what was
expected: ``ConfigError`` carries that line, and the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field

from .config_files import ConfigError, read_yaml
from .logs.formats import ALL_FORMATS
from .training.signals import SignalSettings
from .training.vocabulary import DEFAULT_ALIASES

COLLECTORS = ("training", "gpu", "host", "process")


@dataclass
class PatternConfig:
    pattern: str
    kind: str = "auto"  # auto (each value's kind from its name), train, eval or summary


@dataclass
class LogConfig:
    path: str
    format: str = "auto"
    source: str | None = None
    patterns: list[PatternConfig] = field(default_factory=list)  # for format "regex"


@dataclass
class PodsConfig:
    """DaemonSet mode: the kubelet's logs of the containers picked (see exporter/logs/pods.py)."""

    path: str = "/var/log/pods"  # the kubelet's pod log directory
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    pod_pattern: str | None = None  # a regular expression the whole pod name must match
    containers: list[str] = field(default_factory=list)  # empty: every container
    format: str = "auto"
    procfs: str = "/proc"  # where the node's processes are seen (hostPID), to find a GPU process's pod


@dataclass
class WebConfig:
    listen_address: str = ":9945"
    config_file: str | None = None  # TLS and basic auth, exporter-toolkit's format (webconfig.py)


@dataclass
class FollowConfig:
    # A log is read at most this often between scrapes: the writes in between are read together
    # (with inotify), or the logs are polled this often (without it). A scrape reads what was
    # written before it at once, and a log being rotated is read every 0.2 s at most apart.
    poll_interval_seconds: float = 1.0
    rescan_interval_seconds: float = 2.0  # how often globs and directories are searched again
    max_line_bytes: int = 1 << 20
    retire_after_seconds: float = 300.0  # a file gone this long is let go, its series with it


@dataclass
class GpuConfig:
    poll_interval_seconds: float = 1.0


@dataclass
class HostConfig:
    filesystem_paths: list[str] = field(default_factory=list)
    per_cpu: bool = False


@dataclass
class ProcessConfig:
    pid_file: str | None = None
    cmdline_pattern: str | None = None
    from_gpu: bool = True  # fall back to a process using the GPU


@dataclass
class NonFiniteRuleConfig:
    keys: list[str] = field(default_factory=lambda: ["loss", "validation_loss"])  # canonical names
    count: int = 1  # non-finite values of those keys, seen live in one source, that make the rule hold


@dataclass
class PlateauRuleConfig:
    """The plateau rules take their patience and min_delta from ``signals``, as the alerts do."""


@dataclass
class StallRuleConfig:
    seconds: float = 1800.0  # no step advance for this long while the training process lives


@dataclass
class DivergenceRuleConfig:
    ratio: float = 3.0  # the recent losses' median this many times the lowest it has been


@dataclass
class GuardRulesConfig:
    nonfinite: NonFiniteRuleConfig | None = None
    validation_plateau: PlateauRuleConfig | None = None
    loss_plateau: PlateauRuleConfig | None = None
    stalled: StallRuleConfig | None = None
    diverging: DivergenceRuleConfig | None = None


@dataclass
class GuardWebhookConfig:
    match: dict[str, str] = field(default_factory=dict)  # labels a firing alert must carry to act


@dataclass
class GuardConfig:
    rules: GuardRulesConfig = field(default_factory=GuardRulesConfig)
    webhook: GuardWebhookConfig | None = None
    signal: str | None = None  # sent to the training process; SIGINT unless a command is given
    command: str | None = None  # run with /bin/sh -c instead of sending a signal
    command_timeout_seconds: float = 60.0
    dry_run: bool = False  # decide and report, do nothing
    act_on_backlog: bool = False  # also act on what the logs said before the exporter started


@dataclass
class Config:
    logs: list[LogConfig] = field(default_factory=list)
    pods: PodsConfig | None = None
    web: WebConfig = field(default_factory=WebConfig)
    log_level: str = "info"
    log_format: str = "logfmt"
    follow: FollowConfig = field(default_factory=FollowConfig)
    signals: SignalSettings = field(default_factory=SignalSettings)
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    collectors: dict[str, bool] = field(default_factory=lambda: {name: True for name in COLLECTORS})
    gpu: GpuConfig = field(default_factory=GpuConfig)
    host: HostConfig = field(default_factory=HostConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    guard: GuardConfig | None = None  # off unless configured


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")

def load_file(path: str) -> Config:
    data = read_yaml(path)
    config = build(Config, data, path, "")
    validate(config, path)
    return config


def build(cls, data, filename: str, where: str):
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: {where or 'top level'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{filename}: unknown key {path!r} (expected one of: {', '.join(fields)})")
        kwargs[key] = _convert(hints[key], value, filename, path)
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{filename}: {where or 'top level'}: missing key {missing[0]!r}")
    if cls is Config and "collectors" in kwargs:
        kwargs["collectors"] = {**{name: True for name in COLLECTORS}, **kwargs["collectors"]}
    return cls(**kwargs)


def _convert(hint, value, filename: str, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        if isinstance(value, bool) and dataclasses.is_dataclass(hint) and type(None) in args:
            return build(hint, {}, filename, path) if value else None  # `rule: true`: on, as it comes
        return _convert(hint, value, filename, path)
    if dataclasses.is_dataclass(hint):
        if hint is PatternConfig and isinstance(value, str):
            value = {"pattern": value}
        if hint is LogConfig and isinstance(value, str):
            value = {"path": value}
        return build(hint, value, filename, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{filename}: {path}: expected a list, got {_kind(value)}")
        return [_convert(args[0], item, filename, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{filename}: {path}: expected a mapping, got {_kind(value)}")
        return {str(k): _convert(args[1], v, filename, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{filename}: {path}: expected true or false, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{filename}: {path}: expected a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{filename}: {path}: expected a finite number, got {_kind(value)[:40]}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{filename}: {path}: expected a whole number, got {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{filename}: {path}: expected a string, got {_kind(value)}")
        return str(value)
    return value


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {str(value)[:40]!r}", bool: f"{value}".lower()}.get(
        type(value), f"{type(value).__name__} {value!r}"[:60])


# Every number the config holds (by its key), with the range that makes sense for it (both ends
# included, but for the keys in ABOVE_LOWEST). The upper ends are far beyond any real use; they are there
# because a waiting thread cannot wait longer than the platform's limit, and an absurd window or
# line length is memory. A key under a section that is off (the guard's) is not checked.
RANGES = {
    "signals.min_delta": (0, 1e12),
    "signals.patience": (1, 1_000_000),
    "signals.spike_window": (1, 100_000),
    "signals.spike_factor": (1, 1e6),
    "signals.spike_min_points": (1, 100_000),
    "signals.max_keys": (1, 100_000),
    "signals.loss_patience": (1, 1_000_000),
    "signals.loss_min_delta": (0, 1e12),
    "signals.loss_window_steps": (1, 1_000_000_000),
    "follow.poll_interval_seconds": (0.01, 60),
    "follow.rescan_interval_seconds": (0.1, 3600),
    "follow.max_line_bytes": (1024, 1 << 30),
    "follow.retire_after_seconds": (1, 30 * 86400),
    "gpu.poll_interval_seconds": (0.01, 3600),
    "guard.command_timeout_seconds": (0.1, 86_400),
    "guard.rules.nonfinite.count": (1, 1_000_000),
    "guard.rules.stalled.seconds": (1, 10_000_000),
    "guard.rules.diverging.ratio": (1, 1e6),
}
ABOVE_LOWEST = ("signals.spike_factor", "guard.rules.diverging.ratio")
# What the guard may send the training process (see the README for what each framework does).
GUARD_SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9945``, ``0.0.0.0:9945``, ``127.0.0.1:9945``, ``[::1]:9945`` into (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {address!r} is not HOST:PORT (e.g. ':9945' or '127.0.0.1:9945')")
    return host.strip("[]"), int(port)


def validate(config: Config, filename: str) -> None:
    """Checks that go beyond types; each names the key at fault."""
    try:
        parse_listen_address(config.web.listen_address)
    except ValueError as error:
        raise ConfigError(f"{filename}: web.listen_address: {error}") from None
    if config.web.config_file:
        from .webconfig import load_web_config

        load_web_config(config.web.config_file)  # its errors name that file and its key
    if config.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{filename}: log_level: expected one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"{filename}: log_format: expected one of {', '.join(LOG_FORMATS)}, got {config.log_format!r}")
    for name in config.collectors:
        if name not in COLLECTORS:
            raise ConfigError(f"{filename}: unknown collector 'collectors.{name}' (expected one of: {', '.join(COLLECTORS)})")
    for i, entry in enumerate(config.logs):
        where = f"logs[{i}]"
        _check_format(entry.format, filename, f"{where}.format")
        if entry.format == "regex" and not entry.patterns:
            raise ConfigError(f"{filename}: {where}.patterns: format regex needs at least one pattern")
        if entry.patterns and entry.format != "regex":
            raise ConfigError(f"{filename}: {where}.patterns: patterns need format: regex")
        for j, pattern in enumerate(entry.patterns):
            if pattern.kind not in ("auto", "train", "eval", "summary"):
                raise ConfigError(f"{filename}: {where}.patterns[{j}].kind: expected auto, train, eval or summary")
            try:
                compiled = re.compile(pattern.pattern)
            except re.error as error:
                raise ConfigError(f"{filename}: {where}.patterns[{j}]: invalid regular expression: {error}") from None
            if not compiled.groupindex:
                raise ConfigError(f"{filename}: {where}.patterns[{j}]: the pattern has no named group "
                                  "such as (?P<loss>...)")
    if config.pods is not None:
        _validate_pods(config.pods, filename)
    s = config.signals
    if s.mode not in ("min", "max"):
        raise ConfigError(f"{filename}: signals.mode: expected min or max, got {s.mode!r}")
    for key, (low, high) in RANGES.items():
        number = functools.reduce(lambda section, name: getattr(section, name, None), key.split("."), config)
        if number is None:
            continue
        above = key in ABOVE_LOWEST
        # Written as "in range", which NaN (from a flag) never is.
        if not ((low < number if above else low <= number) and number <= high):
            lowest = f"more than {low:g}" if above else f"{low:g} or more"
            shown = f"{number:g}" if isinstance(number, float) else f"{number}"[:30]  # ints of any size
            raise ConfigError(f"{filename}: {key}: expected {lowest} and at most {high:g}, got {shown}")
    unknown = sorted(set(config.vocabulary) - set(DEFAULT_ALIASES))
    if unknown:
        raise ConfigError(f"{filename}: vocabulary.{unknown[0]}: not a canonical name "
                          f"(expected one of: {', '.join(DEFAULT_ALIASES)})")
    if config.process.cmdline_pattern:
        _check_regex(config.process.cmdline_pattern, filename, "process.cmdline_pattern")
    if config.guard is not None:
        _validate_guard(config, filename)


def _validate_guard(config: Config, filename: str) -> None:
    guard = config.guard
    rules = guard.rules
    if guard.webhook is None and not any(getattr(rules, f.name) for f in dataclasses.fields(rules)):
        raise ConfigError(f"{filename}: guard: no rule and no webhook: nothing to act on (see guard.rules)")
    if guard.signal is not None and guard.command is not None:
        raise ConfigError(f"{filename}: guard.command: give a signal or a command, not both")
    if guard.signal is not None and guard.signal not in GUARD_SIGNALS:
        raise ConfigError(f"{filename}: guard.signal: expected one of {', '.join(GUARD_SIGNALS)}, got {guard.signal!r}")
    if guard.command is not None and not guard.command.strip():
        raise ConfigError(f"{filename}: guard.command: empty")
    if rules.nonfinite is not None and not [key for key in rules.nonfinite.keys if key.strip()]:
        raise ConfigError(f"{filename}: guard.rules.nonfinite.keys: expected at least one key")
    process = config.process
    if not (process.pid_file or process.cmdline_pattern or (process.from_gpu and config.collectors.get("gpu", True))):
        raise ConfigError(f"{filename}: guard: nothing finds the training process it acts on: set "
                          "process.pid_file or process.cmdline_pattern (or keep process.from_gpu with the gpu collector)")
    if guard.webhook is None:
        return
    if not guard.webhook.match:
        raise ConfigError(f"{filename}: guard.webhook.match: expected the labels that name this run's alerts, "
                          "e.g. {job: my-run}")
    for name in guard.webhook.match:
        if not _LABEL_NAME.fullmatch(name):
            raise ConfigError(f"{filename}: guard.webhook.match.{name}: not a label name")
    # An endpoint that stops the job must not be open to anyone who can reach the port.
    from .webconfig import load_web_config, requires_credentials

    if not (config.web.config_file and requires_credentials(load_web_config(config.web.config_file))):
        raise ConfigError(f"{filename}: guard.webhook: needs credentials: a web config (web.config_file) with "
                          "basic_auth_users or client certificates (client_auth_type)")


def _check_format(fmt: str, filename: str, key: str) -> None:
    if fmt not in ("auto", *ALL_FORMATS):
        raise ConfigError(f"{filename}: {key}: unknown format {fmt!r} "
                          f"(expected auto or one of: {', '.join(ALL_FORMATS)})")


def _check_regex(pattern: str, filename: str, key: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"{filename}: {key}: invalid regular expression: {error}") from None


def _validate_pods(pods: PodsConfig, filename: str) -> None:
    _check_format(pods.format, filename, "pods.format")
    if pods.pod_pattern is not None:
        _check_regex(pods.pod_pattern, filename, "pods.pod_pattern")
    for key in ("namespaces", "containers"):
        for i, name in enumerate(getattr(pods, key)):
            # A namespace or container name is a DNS label: "_" and "/" would never match a directory.
            if not name or "_" in name or "/" in name:
                raise ConfigError(f"{filename}: pods.{key}[{i}]: expected a {key[:-1]} name, got {name!r}")
