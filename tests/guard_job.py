"""A tiny training job for the guard's tests: writes a Hugging Face Trainer console log, a
line a step, and its PID to a file, as a real job's launcher would.

    python tests/guard_job.py LOG PID_FILE [--steps 40] [--interval 0.05] [--nan-at STEP]
                              [--growth 1.0] [--hold 30]

The loss falls (or, with ``--growth`` above 1, is multiplied by it every step: a run diverging
while staying finite). ``--nan-at`` makes that step's loss NaN, as with
``logging_nan_inf_filter=False``. After the last step the job holds on for ``--hold`` seconds
(saving a checkpoint, say), still alive. On stdout, one JSON object per event, with its Unix
time: the NaN line written, the end of the steps, and how it ended (SIGINT, SIGTERM, done).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def say(event: str) -> None:
    print(json.dumps({"event": event, "time": time.time()}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("pid_file")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--nan-at", type=int)
    parser.add_argument("--growth", type=float, default=1.0)
    parser.add_argument("--hold", type=float, default=30.0)
    args = parser.parse_args()

    def stopped(signum, frame):  # noqa: ARG001 - the signal API
        say(signal.Signals(signum).name)
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, stopped)
    signal.signal(signal.SIGTERM, stopped)
    with open(args.pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(args.pid_file + ".tmp", args.pid_file)
    loss = 2.0
    with open(args.log, "a", encoding="utf-8") as log:
        for step in range(1, args.steps + 1):
            loss = loss * args.growth if args.growth != 1.0 else 2.0 / (1 + step / 10)
            shown = "nan" if step == args.nan_at else f"{loss:.4g}"
            log.write(f"{{'loss': {shown}, 'grad_norm': 0.9, 'learning_rate': 1e-05, "
                      f"'epoch': {step / 1000:.3f}}}\n")
            log.flush()
            if step == args.nan_at:
                say("nan_written")
            time.sleep(args.interval)
    say("steps_done")
    time.sleep(args.hold)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
