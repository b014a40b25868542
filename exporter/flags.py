"""Command-line flags, node_exporter's style (``--web.listen-address``, ``--collector.gpu`` /
``--no-collector.gpu``): the parsers of the commands, and how flags over a config file become
the Config. A mistake is a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from . import __version__
from .config import COLLECTORS, LOG_FORMATS, LOG_LEVELS, Config, ConfigError, DivergenceRuleConfig, GuardConfig, \
    GuardWebhookConfig, LogConfig, NonFiniteRuleConfig, PlateauRuleConfig, PodsConfig, StallRuleConfig, load_file, \
    validate
from .logs.formats import ALL_FORMATS

USAGE_EXIT = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text!r}")
    return value


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file; flags override it")
    parser.add_argument("--format", choices=("auto", *ALL_FORMATS), metavar="NAME",
                        help="force the format of the --log paths (default: detect per file). "
                             f"One of: auto, {', '.join(ALL_FORMATS)}")
    parser.add_argument("--signals.patience", dest="patience", type=int, metavar="N",
                        help="evaluations without improvement that make a plateau (default 5)")
    parser.add_argument("--signals.min-delta", dest="min_delta", type=float, metavar="X",
                        help="an improvement must beat the best by more than this (default 0)")
    parser.add_argument("--signals.mode", dest="mode", choices=("min", "max"),
                        help="min: lower validation value is better (default); max: higher is better")
    parser.add_argument("--signals.monitor", dest="monitor", metavar="KEY",
                        help="the evaluated key whose best and patience are tracked (default validation_loss)")
    parser.add_argument("--signals.loss-patience", dest="loss_patience", type=int, metavar="N",
                        help="epochs whose best training loss did not improve that make a loss plateau (default 5)")
    parser.add_argument("--signals.loss-min-delta", dest="loss_min_delta", type=float, metavar="X",
                        help="an epoch's best training loss must beat the best by more than this (default 0)")


def serve_parser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Serve Prometheus metrics from training logs, GPUs and the host.")
    parser.add_argument("--version", action="version", version=f"training-exporter {__version__}")
    parser.add_argument("--log", action="append", metavar="PATH", default=None,
                        help="a log file, glob or directory to follow (repeatable)")
    add_log_flags(parser)
    parser.add_argument("--web.listen-address", dest="listen_address", metavar="ADDR",
                        help="address to serve on (default :9945)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="TLS and basic auth, in the format of Prometheus's exporter-toolkit")
    parser.add_argument("--log.level", dest="log_level", choices=LOG_LEVELS, help="logging level (default info)")
    parser.add_argument("--log.format", dest="log_format", choices=LOG_FORMATS,
                        help="the exporter's own log lines: logfmt (default) or json")
    for name in COLLECTORS:
        parser.add_argument(f"--collector.{name}", dest=f"collector_{name}", default=None,
                            action=argparse.BooleanOptionalAction, help=f"enable the {name} collector (default on)")
    parser.add_argument("--gpu.poll-interval", dest="gpu_poll", type=positive_float, metavar="SECONDS",
                        help="NVML poll interval (default 1)")
    parser.add_argument("--host.filesystem-path", dest="fs_paths", action="append", metavar="PATH",
                        help="report free space of the filesystem holding PATH (repeatable)")
    parser.add_argument("--process.pid-file", dest="pid_file", metavar="FILE",
                        help="file holding the training process's PID")
    parser.add_argument("--process.cmdline-pattern", dest="cmdline_pattern", metavar="REGEX",
                        help="find the training process by its command line")
    _add_pods_flags(parser)
    _add_guard_flags(parser)
    return parser


def _add_pods_flags(parser: argparse.ArgumentParser) -> None:
    pods = parser.add_argument_group("pods", "DaemonSet mode: the kubelet's container logs (on when any is given)")
    pods.add_argument("--pods.path", dest="pods_path", metavar="PATH",
                      help="follow the kubelet's container logs under PATH (default /var/log/pods)")
    pods.add_argument("--pods.namespace", dest="pods_namespaces", action="append", metavar="NAME",
                      help="only pods in this namespace (repeatable; default every namespace)")
    pods.add_argument("--pods.pod-pattern", dest="pods_pod_pattern", metavar="REGEX",
                      help="only pods whose whole name this regular expression matches")
    pods.add_argument("--pods.container", dest="pods_containers", action="append", metavar="NAME",
                      help="only containers of this name (repeatable; default every container)")


def _add_guard_flags(parser: argparse.ArgumentParser) -> None:
    guard = parser.add_argument_group("guard", "stop a failing run (off unless a rule or the webhook is given)")
    guard.add_argument("--guard.on-nonfinite", dest="guard_nonfinite", metavar="KEYS",
                       help="act on non-finite values of these keys (comma-separated, e.g. loss,grad_norm)")
    guard.add_argument("--guard.nonfinite-count", dest="guard_nonfinite_count", type=int, metavar="N",
                       help="non-finite values seen in one source that make that rule hold (default 1)")
    guard.add_argument("--guard.on-validation-plateau", dest="guard_validation_plateau", action="store_true",
                       default=None, help="act on the validation plateau (signals.patience)")
    guard.add_argument("--guard.on-loss-plateau", dest="guard_loss_plateau", action="store_true", default=None,
                       help="act on the training-loss plateau (signals.loss_patience)")
    guard.add_argument("--guard.on-stall", dest="guard_stall", type=positive_float, metavar="SECONDS",
                       help="act when no step advanced for this long while the training process lives")
    guard.add_argument("--guard.on-divergence", dest="guard_divergence", type=positive_float, metavar="RATIO",
                       help="act when the recent losses' median is over RATIO times the lowest it has been")
    guard.add_argument("--guard.webhook.match", dest="guard_match", action="append", metavar="LABEL=VALUE",
                       help="take Alertmanager's alerts carrying this label at POST /-/guard/alertmanager (repeatable)")
    guard.add_argument("--guard.signal", dest="guard_signal", metavar="NAME",
                       help="the signal sent to the training process (default SIGINT)")
    guard.add_argument("--guard.command", dest="guard_command", metavar="CMD",
                       help="run this with /bin/sh -c instead of sending a signal")
    guard.add_argument("--guard.dry-run", dest="guard_dry_run", action="store_true", default=None,
                       help="decide and report, do nothing")
    guard.add_argument("--guard.act-on-backlog", dest="guard_act_on_backlog", action="store_true", default=None,
                       help="also act on what the logs said before the exporter started")


def _apply_guard(config: Config, args: argparse.Namespace) -> None:
    """The guard flags, over the config's guard section (made when a flag needs one)."""
    given = {k: v for k, v in vars(args).items() if k.startswith("guard_") and v is not None}
    if not given:
        return
    guard = config.guard = config.guard or GuardConfig()
    rules = guard.rules
    if "guard_nonfinite" in given or "guard_nonfinite_count" in given:
        rules.nonfinite = rules.nonfinite or NonFiniteRuleConfig()
        if "guard_nonfinite" in given:
            rules.nonfinite.keys = [key.strip() for key in args.guard_nonfinite.split(",") if key.strip()]
        if "guard_nonfinite_count" in given:
            rules.nonfinite.count = args.guard_nonfinite_count
    if args.guard_validation_plateau:
        rules.validation_plateau = PlateauRuleConfig()
    if args.guard_loss_plateau:
        rules.loss_plateau = PlateauRuleConfig()
    if args.guard_stall is not None:
        rules.stalled = StallRuleConfig(seconds=args.guard_stall)
    if args.guard_divergence is not None:
        rules.diverging = DivergenceRuleConfig(ratio=args.guard_divergence)
    if args.guard_match:
        match = {}
        for item in args.guard_match:
            name, equals, value = item.partition("=")
            if not equals:
                raise ConfigError(f"--guard.webhook.match: expected LABEL=VALUE, got {item!r}")
            match[name.strip()] = value
        guard.webhook = GuardWebhookConfig(match=match)
    if "guard_signal" in given and "guard_command" in given:
        raise ConfigError("--guard.command: give --guard.signal or --guard.command, not both")
    if "guard_signal" in given:  # a flag's action replaces the config's
        guard.signal, guard.command = args.guard_signal, None
    if "guard_command" in given:
        guard.signal, guard.command = None, args.guard_command
    if args.guard_dry_run:
        guard.dry_run = True
    if args.guard_act_on_backlog:
        guard.act_on_backlog = True


def _apply_common(config: Config, args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k) for k in ("patience", "min_delta", "mode", "monitor", "loss_patience",
                                               "loss_min_delta")
                 if getattr(args, k, None) is not None}
    if overrides:
        config.signals = dataclasses.replace(config.signals, **overrides)
    return config


def config_from_args(args: argparse.Namespace, logs: list[str] | None) -> Config:
    config = load_file(args.config) if args.config else Config()
    if logs:
        config.logs = [LogConfig(path=path, format=args.format or "auto") for path in logs]
    elif args.format:
        for entry in config.logs:
            entry.format = args.format
    _apply_common(config, args)
    for name in COLLECTORS:
        flag = getattr(args, f"collector_{name}", None)
        if flag is not None:
            config.collectors[name] = flag
    if getattr(args, "listen_address", None):
        config.web.listen_address = args.listen_address
    if getattr(args, "web_config_file", None):
        config.web.config_file = args.web_config_file
    if getattr(args, "log_level", None):
        config.log_level = args.log_level
    if getattr(args, "log_format", None):
        config.log_format = args.log_format
    if getattr(args, "gpu_poll", None):
        config.gpu.poll_interval_seconds = args.gpu_poll
    if getattr(args, "fs_paths", None):
        config.host.filesystem_paths = args.fs_paths
    if getattr(args, "pid_file", None):
        config.process.pid_file = args.pid_file
    if getattr(args, "cmdline_pattern", None):
        config.process.cmdline_pattern = args.cmdline_pattern
    _apply_pods(config, args)
    _apply_guard(config, args)
    validate(config, "command line" if not args.config else f"{args.config} (with flags)")
    return config


def _apply_pods(config: Config, args: argparse.Namespace) -> None:
    flags = {"path": getattr(args, "pods_path", None), "namespaces": getattr(args, "pods_namespaces", None),
             "pod_pattern": getattr(args, "pods_pod_pattern", None), "containers": getattr(args, "pods_containers", None)}
    given = {key: value for key, value in flags.items() if value is not None}
    if given:
        config.pods = dataclasses.replace(config.pods or PodsConfig(), **given)
