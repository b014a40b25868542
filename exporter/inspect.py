"""``training-exporter inspect``: read logs offline and say what was understood.

This is how a user checks, before deploying, that their log is read as they expect.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from .app import LogReading
from .config import LogConfig, validate


def build_report(reading: LogReading) -> dict:
    """Everything inspect prints, as plain data (the --json output)."""
    settings = reading.states.settings
    files = reading.follower.files()
    sources = []
    for source, _labels, rank, state in reading.states.items():
        snap = state.snapshot()
        keys = []
        for name, count in sorted(snap.key_counts.items()):
            last = snap.values.get(name, snap.extra.get(name))
            keys.append({"key": name, "last": _number(last), "count": count,
                         "nonfinite": snap.nonfinite.get(name, 0)})
        plateau = snap.evals_since_best >= settings.patience
        sources.append({
            "source": source,
            "rank": rank,
            "files": [] if rank is not None else [{
                "path": f.path,
                "format": f.format,
                "exists": f.exists,
                "lines": f.lines,
                "not_understood": f.ignored,
                "parse_errors": f.parse_errors,
                "too_long": f.too_long,
                "not_understood_examples": list(f.ignored_examples),
                "parse_error_examples": [{"line": line, "error": err} for line, err in f.error_examples],
            } for f in files if f.source == source],
            "records": snap.records,
            "last_step": snap.step,
            "max_steps": snap.max_steps,
            "keys": keys,
            "validation": {
                "monitor": settings.monitor,
                "mode": settings.mode,
                "min_delta": settings.min_delta,
                "best": _number(snap.best),
                "best_step": snap.best_step,
                "evaluations": snap.evals_total,
                "evals_since_best": snap.evals_since_best if snap.evals_total else None,
                "patience": settings.patience,
                "plateau": plateau,
            },
            "nonfinite": [{"step": step, "key": key} for step, key in snap.nonfinite_steps],
            "oom_events": snap.events["oom"],
            "loss_scale_overflows": snap.events["loss_scale_overflow"],
            "loss_spikes": snap.spikes_total,
            "hparams": {**snap.meta_numbers, **snap.meta_strings},
            "dropped_keys": snap.dropped_keys_total,
        })
    return {"sources": sources}


def _number(value: float | None):
    """JSON has no NaN: say it in words."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["─" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: dict) -> str:
    out: list[str] = []
    if not report["sources"]:
        return "No log files found.\n"
    for src in report["sources"]:
        title = src["source"] if src["rank"] is None else f"{src['source']}, rank {src['rank']}"
        out.append(f"━━ source {title} " + "━" * max(0, 60 - len(title)))
        for f in src["files"]:
            if not f["exists"]:
                out.append(f"  {f['path']}: does not exist (yet)")
                continue
            out.append(f"  {f['path']}")
            out.append(f"    format {f['format']} · {f['lines']} lines · {f['not_understood']} not understood"
                       f" · {f['parse_errors']} parse errors" + (f" · {f['too_long']} too long" if f["too_long"] else ""))
            for example in f["parse_error_examples"][:3]:
                out.append(f"      parse error: {example['line'][:90]!r} ({example['error']})")
            for example in f["not_understood_examples"][:3]:
                out.append(f"      not understood: {example[:100]!r}")
        records = src["records"]
        out.append(f"  records: {records['train']} train, {records['eval']} eval, {records['summary']} summary"
                   f" · last step {_fmt(src['last_step'])}" + (f" of {_fmt(src['max_steps'])}" if src["max_steps"] else ""))
        if src["keys"]:
            out.append("")
            rows = [[k["key"], _fmt(k["last"]), str(k["count"]), str(k["nonfinite"] or "")] for k in src["keys"]]
            out.extend("  " + line for line in _table(rows, ["key", "last", "count", "non-finite"]))
        v = src["validation"]
        out.append("")
        if v["evaluations"]:
            out.append(f"  best {v['monitor']}: {_fmt(v['best'])} at step {_fmt(v['best_step'])}"
                       f" ({v['mode']}, min_delta {_fmt(v['min_delta'])}) · {v['evaluations']} evaluations")
            verdict = "PLATEAU (the plateau alert would fire)" if v["plateau"] else "no plateau"
            out.append(f"  plateau rule: {v['evals_since_best']} evaluation(s) since best, patience {v['patience']}"
                       f" → {verdict}")
        else:
            out.append(f"  no evaluations of {v['monitor']} seen")
        if src["nonfinite"]:
            shown = ", ".join(f"{n['key']}@{_fmt(n['step'])}" for n in src["nonfinite"][:10])
            more = f" (+{len(src['nonfinite']) - 10} more)" if len(src["nonfinite"]) > 10 else ""
            out.append(f"  non-finite values: {shown}{more}")
        else:
            out.append("  non-finite values: none")
        out.append(f"  OOM events: {src['oom_events']} · loss-scale overflows: {src['loss_scale_overflows']}"
                   f" · loss spikes: {src['loss_spikes']}")
        if src["hparams"]:
            facts = ", ".join(f"{k}={_fmt(v)}" for k, v in list(src["hparams"].items())[:12])
            out.append(f"  run facts: {facts}")
        if src["dropped_keys"]:
            out.append(f"  dropped keys (over the limit): {src['dropped_keys']}")
        out.append("")
    return "\n".join(out)


def inspected_logs(paths: list[str], configured: list[LogConfig], forced: str | None) -> list[LogConfig]:
    """The logs to read: each path as the configured log of the same path is read, or else as
    the config's one log is (so that a sample can be checked against a format and its patterns
    before deploying), or else detected; ``forced`` (``--format``) overrides the format."""
    by_path = {entry.path: entry for entry in configured}
    logs = []
    for path in paths:
        model = by_path.get(path) or (configured[0] if len(configured) == 1 else None)
        if model is None:
            logs.append(LogConfig(path=path, format=forced or "auto"))
        else:
            logs.append(dataclasses.replace(model, path=path, format=forced or model.format,
                                            source=model.source if model.path == path else None))
    return logs


def run_inspect(argv: list[str]) -> int:
    from .flags import USAGE_EXIT, Parser, add_log_flags, config_from_args

    parser = Parser(prog="training-exporter inspect",
                    description="Read training logs offline and print what was understood.")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="log files, globs or directories (default: the logs of --config); with "
                             "--config, a path is read as the config reads it, or as its only log")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_log_flags(parser)
    args = parser.parse_args(argv)
    if not args.paths and not args.config:
        parser.error("give the logs to read: PATH..., or --config FILE")
    config = config_from_args(args, None)
    if args.paths:
        config.logs = inspected_logs(args.paths, config.logs, args.format)
        validate(config, f"{args.config} (with flags)" if args.config else "command line")
    elif not config.logs:
        parser.error(f"{args.config} has no logs: give PATH...")
    paths = [entry.path for entry in config.logs]
    missing = [p for p in paths if not os.path.exists(p) and not any(c in p for c in "*?[")]
    if missing:
        print(f"training-exporter inspect: error: no such file or directory: {missing[0]}", file=sys.stderr)
        return USAGE_EXIT
    reading = LogReading(config, keep_history=True)
    reading.read_to_end()
    report = build_report(reading)
    reading.follower.stop()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
