"""``training-exporter demo``: a simulated training run to look at without a training job.

A thread writes a log the way a Hugging Face Trainer run with tqdm writes its merged console
output: progress bars redrawn with ``\\r``, a dict line every few steps, an evaluation now and
then. The loss falls; then the validation loss stops improving (a plateau); then a NaN appears
the way Hugging Face hides it by default (the logged loss stays finite, ``grad_norm`` is nan)
and the next evaluation is nan. The exporter follows that log and serves the metrics.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

LOG_EVERY = 10
EVAL_EVERY = 50
NAN_FROM_STEP = 560
PLATEAU_FROM_STEP = 200


def _bar(step: int, total: int, elapsed: float) -> str:
    fraction = step / total
    filled = int(fraction * 10)
    rate = step / elapsed if elapsed > 0 else 0.0
    return (f"\r{int(fraction * 100):3d}%|{'█' * filled}{' ' * (10 - filled)}| {step}/{total} "
            f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}<00:00, {rate:5.2f}it/s]")


def simulate(path: str, steps: int, speed: float, stop: threading.Event, seed: int = 7) -> None:
    """Write the simulated run's log to ``path``, ``speed`` steps per second."""
    rng = random.Random(seed)
    started = time.time()
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        log.write("***** Running training *****\n  Num examples = 38,400\n  Num Epochs = 3\n"
                  f"  Total optimization steps = {steps}\n")
        for step in range(1, steps + 1):
            if stop.wait(1.0 / speed):
                return
            epoch = round(3 * step / steps, 4)
            bar = _bar(step, steps, time.time() - started)
            log.write(bar)
            if step % LOG_EVERY == 0:
                loss = 2.6 * math.exp(-step / 120) + 1.05 + rng.gauss(0, 0.03)
                grad_norm = "nan" if step >= NAN_FROM_STEP else f"{1.8 * math.exp(-step / 300) + rng.random() * 0.2:.4f}"
                lr = 5e-5 * (1 - step / steps)
                # Like tqdm.write: clear the bar, print the line, redraw the bar.
                log.write(f"\r{' ' * len(bar)}\r{{'loss': '{loss:.4f}', 'grad_norm': '{grad_norm}', "
                          f"'learning_rate': '{lr:.4e}', 'epoch': '{epoch}'}}\n{bar}")
            if step % EVAL_EVERY == 0:
                # Improves until PLATEAU_FROM_STEP, then creeps up within noise: a plateau.
                if step >= NAN_FROM_STEP:
                    val = "nan"
                elif step <= PLATEAU_FROM_STEP:
                    val = f"{1.45 + 1.4 * math.exp(-step / 70):.4f}"
                else:
                    val = f"{1.533 + 0.0004 * (step - PLATEAU_FROM_STEP) / 10 + rng.gauss(0, 0.002):.4f}"
                log.write(f"\n{{'eval_loss': '{val}', 'eval_runtime': '1.52', 'eval_samples_per_second': '336.8', "
                          f"'eval_steps_per_second': '10.53', 'epoch': '{epoch}'}}\n")
        runtime = time.time() - started
        log.write(f"\n{{'train_runtime': '{runtime:.2f}', 'train_samples_per_second': '{38400 / runtime:.2f}', "
                  f"'train_steps_per_second': '{steps / runtime:.3f}', 'train_loss': '1.4231', 'epoch': '3.0'}}\n")


def run_demo(argv: list[str]) -> int:
    from .app import serve
    from .config import Config, LogConfig, validate
    from .flags import Parser
    from .logformat import setup_logging

    parser = Parser(prog="training-exporter demo",
                    description="Serve metrics from a simulated training run (no training job needed).")
    parser.add_argument("--web.listen-address", dest="listen_address", default=":9945", metavar="ADDR")
    parser.add_argument("--speed", type=float, default=10.0, help="simulated steps per second (default 10)")
    parser.add_argument("--steps", type=int, default=600, help="steps in the simulated run (default 600)")
    parser.add_argument("--dir", help="where to write the log (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.speed <= 0 or args.steps < 1:
        parser.error("--speed must be above 0 and --steps at least 1")

    directory = args.dir or tempfile.mkdtemp(prefix="training-exporter-demo-")
    os.makedirs(directory, exist_ok=True)
    log_path = os.path.join(directory, "train.log")
    pid_path = os.path.join(directory, "train.pid")

    config = Config(logs=[LogConfig(path=log_path)])
    config.web.listen_address = args.listen_address
    config.process.pid_file = pid_path
    validate(config, "demo")
    setup_logging(config.log_level)

    # The simulated job is a process of its own, as a real one would be, so the process
    # collector has something to watch.
    job: list[subprocess.Popen] = []

    def started(exporter) -> None:
        host, port = exporter.server.httpd.server_address[:2]
        shown = host if host not in ("", "0.0.0.0", "::") else "localhost"
        print(f"training-exporter demo: simulated run writing {log_path}", flush=True)
        print(f"training-exporter demo: metrics at http://{shown}:{port}/metrics  (Ctrl-C to stop)", flush=True)
        job.append(subprocess.Popen([sys.executable, "-m", "exporter.demo", log_path, str(args.steps), str(args.speed)]))
        with open(pid_path, "w") as handle:
            handle.write(f"{job[0].pid}\n")

    try:
        return serve(config, on_started=started)
    finally:
        for process in job:
            process.terminate()
            process.wait(timeout=5)


if __name__ == "__main__":
    # The simulated job itself: python -m exporter.demo LOG STEPS SPEED
    simulate(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), threading.Event())
