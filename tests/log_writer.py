"""A training job's log, written fast, rotated while it is written.

    python tests/log_writer.py PATH [--rate 5000] [--seconds 3] [--rotate none|rename|copytruncate]
                                    [--every 0.3] [--format jsonl|hf] [--start-step 1]

Lines are written whole, one ``write`` each, in bursts every 10 ms, through an O_APPEND file (as
Python's logging does), so a copy-truncate rotation never leaves a hole. Every ``--every``
seconds the log is rotated: ``rename`` the way RotatingFileHandler does it (close, rename,
reopen, all in the writing thread), ``copytruncate`` the way logrotate does it (another thread
copies then truncates while the writer goes on). Prints a JSON summary: lines written, the last
step, rotations, and for copytruncate the lines written between the start of each copy and the
end of its truncate, which that method can lose.

JSON lines (``jsonl``) carry a step, a loss, a learning rate, and every 20 steps an evaluation
whose validation loss plateaus and turns NaN once; Hugging Face lines (``hf``) are the console
dict with tqdm bars glued in front by ``\\r``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time


def lines_for(step: int, fmt: str) -> list[str]:
    loss = 2.0 / math.sqrt(step) + (0.5 if step % 97 == 0 else 0.0)  # spikes now and then
    if fmt == "hf":
        bar = f"\r{step % 100:3d}%|####      | {step}/100000 [00:01<00:09,  9.50it/s]"
        lines = [f"{bar}{{'loss': {loss:.4f}, 'grad_norm': {'nan' if step % 500 == 0 else '0.9'}, "
                 f"'learning_rate': 1e-05, 'epoch': {step / 1000:.3f}}}\n"]
        if step % 20 == 0:
            lines.append(f"{{'eval_loss': {_validation(step)}, 'eval_runtime': 1.5, 'epoch': {step / 1000:.3f}}}\n")
        return lines
    lines = [json.dumps({"step": step, "loss": loss, "lr": 1e-4, "epoch": step / 1000}) + "\n"]
    if step % 20 == 0:
        lines.append(json.dumps({"step": step, "eval_loss": _validation(step)}) + "\n")
    return lines


def _validation(step: int) -> float:
    if step == 400:
        return float("nan")
    return max(1.0, 3.0 - step / 200) + (step % 60) / 1000  # falls, then plateaus with noise


class Writer:
    def __init__(self, path: str, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.lock = threading.Lock()  # the rename rotation and the writes never interleave
        self.fd = self._open()
        self.written = 0
        self.step = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_step(self) -> None:
        with self.lock:
            self.step += 1
            for line in lines_for(self.step, self.fmt):
                os.write(self.fd, line.encode())
                self.written += 1

    def rotate_rename(self, generation: int) -> None:
        with self.lock:
            os.close(self.fd)
            os.rename(self.path, f"{self.path}.{generation}")
            self.fd = self._open()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--rate", type=float, default=5000, help="steps per second")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rotate", choices=("none", "rename", "copytruncate"), default="none")
    parser.add_argument("--every", type=float, default=0.3)
    parser.add_argument("--format", choices=("jsonl", "hf"), default="jsonl")
    args = parser.parse_args()

    writer = Writer(args.path, args.format)
    done = threading.Event()
    rotations, window = 0, 0

    def copytruncate() -> None:
        nonlocal rotations, window
        while not done.wait(args.every):
            before = writer.written
            shutil.copyfile(args.path, f"{args.path}.{rotations + 1}")
            os.truncate(args.path, 0)
            window += writer.written - before
            rotations += 1

    rotator = threading.Thread(target=copytruncate, daemon=True)
    if args.rotate == "copytruncate":
        rotator.start()
    started = time.monotonic()
    next_rotation = started + args.every
    burst = max(1, int(args.rate / 100))
    while time.monotonic() - started < args.seconds:
        for _ in range(burst):
            writer.write_step()
        if args.rotate == "rename" and time.monotonic() >= next_rotation:
            rotations += 1
            writer.rotate_rename(rotations)
            next_rotation += args.every
        time.sleep(0.01)
    done.set()
    if rotator.is_alive():
        rotator.join()
    os.close(writer.fd)
    json.dump({"written": writer.written, "last_step": writer.step, "rotations": rotations,
               "copytruncate_window": window}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
