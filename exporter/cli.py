"""The ``training-exporter`` command: serve (the default), inspect, demo.

Flags override the config file (``flags.py``). A mistake stops the start with one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from .config import ConfigError
from .flags import USAGE_EXIT, config_from_args, serve_parser
from .logformat import setup_logging

SUBCOMMANDS = ("serve", "inspect", "demo")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "serve"
    if argv and argv[0] in SUBCOMMANDS:
        argv = argv[1:]
    try:
        if command == "inspect":
            from .inspect import run_inspect

            return run_inspect(argv)
        if command == "demo":
            from .demo import run_demo

            return run_demo(argv)
        args = serve_parser("training-exporter").parse_args(argv)
        config = config_from_args(args, args.log)
        if not config.logs and config.pods is None and config.collectors.get("training", True):
            print("training-exporter: error: no logs to follow: give --log PATH, --pods.namespace NAME (or "
                  "another --pods flag) or 'logs' in --config (or --no-collector.training to serve hardware "
                  "metrics only)", file=sys.stderr)
            return USAGE_EXIT
        setup_logging(config.log_level, config.log_format)
        from .app import serve

        code = serve(config)
        # serve() stopped what could be stopped in time; threads still inside NVML or a read
        # are daemons. Interpreter finalization beside running daemon threads can stall, or
        # abort if one holds stderr's lock, so the process ends here, its output flushed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except ConfigError as error:
        print(f"training-exporter: error: {error}", file=sys.stderr)
        return USAGE_EXIT
    except OSError as error:
        # e.g. the listen address is taken: say which, in one line.
        print(f"training-exporter: error: {error.strerror or error}", file=sys.stderr)
        return 1
