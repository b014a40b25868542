"""Events seen in any console log (out-of-memory, fp16 overflow) and tqdm progress."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.logs.formats import Event, Record
from exporter.logs.formats.events import parse_progress_bar, scan_events

FIXTURES = Path(__file__).parent / "fixtures" / "console"


def events_in(name: str) -> list[tuple[int, Event]]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    found = []
    for number, line in enumerate(re.split(r"[\r\n]", text), 1):
        record = scan_events(line)
        if record is not None:
            found.append((number, record.event))
    return found


OOM = Event.OOM
OVERFLOW = Event.LOSS_SCALE_OVERFLOW


@pytest.mark.parametrize("name, expected", [
    # One OOM for the one exception line: the traceback frames, the allocator advice and
    # torchrun's ChildFailedError summary that follow it are not further OOMs.
    ("oom_traceback.log", [(18, OOM)]),
    ("deepspeed.log", [(17, OVERFLOW), (18, OVERFLOW)]),
    ("fairseq.log", [(8, OVERFLOW)]),
    ("hf_transformers4.log", [(9, OVERFLOW)]),  # glued behind a tqdm bar
    ("hf_transformers5.log", []),  # "No space left on device" is not out of memory
    ("megatron.log", []),
    ("nanogpt.log", []),
    ("torchtune.log", []),  # "GPU peak memory allocation: 2.35 GiB" is a reading, not an error
    ("fairseq_hydra_json.log", []),
])
def test_events_in_fixtures(name, expected):
    assert events_in(name) == expected


@pytest.mark.parametrize("line", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity "
    "of 79.15 GiB of which 3.06 MiB is free.",
    "[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.53 GiB (GPU 0; 39.59 GiB total "
    "capacity; 36.18 GiB already allocated; 1.18 GiB free; 37.29 GiB reserved in total by PyTorch)",
    "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 64.00 MiB.",
    "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity)",
    "RuntimeError: CUDA error: out of memory",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "Killed",
    "  Killed  ",
    "\tKilled",
    "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 34359738368 bytes. Error code 12 (Cannot allocate memory)",
    "RuntimeError: [enforce fail at C:\\cb\\pytorch\\c10\\core\\impl\\alloc_cpu.cpp:81] data. "
    "DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes.",
])
def test_out_of_memory_lines(line):
    record = scan_events(line)
    assert record is not None and record.event is Event.OOM
    assert record.values == {} and record.step is None


@pytest.mark.parametrize("line", [
    "[2024-05-01 10:00:05,100] [INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! Rank 0 "
    "Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "[2024-05-01 10:00:05,190] [INFO] [loss_scaler.py:190:update_scale] [deepspeed] OVERFLOW! Rank 0 "
    "Skipping step. Attempted loss scale: 32768, but hysteresis is 2. Reducing hysteresis to 1",
    "[2023-02-08 13:52:24,187] [INFO] [stage_1_and_2.py:1762:step] [deepspeed] OVERFLOW! Rank 0 Skipping "
    "step. Attempted loss scale: 65536, reducing to 65536",
    "[deepspeed] OVERFLOW! Rank 0 Skipping step.",
    "[2023-10-31 08:58:34,114] [INFO] [unfused_optimizer.py:207:step] [deepspeed] fp16 dynamic loss scale "
    "overflow! Skipping step. Attempted loss scale: 8192.0, reducing to 4096.0",
    "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0",
    " 66%|██████▌   | 893/1352 [05:32<00:57,  7.92it/s]Gradient overflow.  Skipping step, loss scaler 0 "
    "reducing loss scale to 32768.0",
    "[1,0]<stdout>:Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 4096.0",
    "2024-05-01 09:58:07 | INFO | fairseq.trainer | NOTE: gradient overflow detected, ignoring gradient, "
    "setting loss scale to: 64.0",
])
def test_loss_scale_overflow_lines(line):
    record = scan_events(line)
    assert record is not None and record.event is Event.LOSS_SCALE_OVERFLOW


@pytest.mark.parametrize("line", [
    "step 118 | max_memory_allocated 71.82 GiB | memory_reserved 76.40 GiB",
    "INFO:torchtune.utils._logging:Memory stats after model init:",
    "	GPU peak memory allocation: 2.35 GiB",
    "[Rank 0] (after 100 iterations) memory (MB) | allocated: 14273.8 | max allocated: 35188.2",
    "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
    "    except torch.cuda.OutOfMemoryError:",
    "    except torch.OutOfMemoryError:  # retry with a smaller batch",
    "    raise OutOfMemoryError(msg)",
    "auto_find_batch_size: halving the batch after an out of memory",
    "Killed by signal 9",
    "Process killed",
    "bash: line 1: 12345 Killed                  python train.py",
    "[2023-10-31 08:58:32,525] [INFO] [unfused_optimizer.py:289:_update_scale] No Grad overflow for 500 iterations",
    "[2023-10-31 08:58:32,525] [INFO] [unfused_optimizer.py:290:_update_scale] Increasing dynamic loss scale "
    "from 4096.0 to 8192.0",
    # Logged on every rank beside the one OVERFLOW line per skipped step: counting it would
    # count one overflow once per rank.
    "[2023-10-31 08:58:34,113] [INFO] [unfused_optimizer.py:281:_update_scale] Grad overflow on iteration: 14075",
    "overflow_check: False",
    "",
])
def test_ordinary_lines_are_not_events(line):
    assert scan_events(line) is None


@pytest.mark.parametrize("line, expected", [
    (" 45%|████▌     | 450/1000 [01:02<01:16,  7.21it/s]", (450, 1000)),
    ("  0%|          | 0/870 [00:00<?, ?it/s]", (0, 870)),
    (" 10%|#         | 10/100 [00:01<00:09,  9.50it/s]", (10, 100)),  # ascii bars
    ("Epoch 1: 100%|██████████| 84/84 [01:09<00:00,  1.20it/s]", (84, 84)),
    ("1|3|Loss: 1.5:   0%|          | 3/3235 [00:03<1:01:40,  1.15s/it]", (3, 3235)),
    # Several redraws on one line: the last is the newest.
    (" 10%|█         | 10/100 [00:01<00:09,  9.5it/s] 20%|██        | 20/100 [00:02<00:08,  9.5it/s]",
     (20, 100)),
    # A bar with an unknown total is skipped, an earlier one with a total still counts.
    (" 10%|█         | 10/100 [00:01<00:09,  9.5it/s]| 11/? [00:02, 9.5it/s]", (10, 100)),
    ("| 11/? [00:02, 9.5it/s]", None),
    ("100it [00:10,  9.87it/s]", None),  # tqdm without a total has no N/TOTAL
    ("iteration      201/  250000 | consumed samples: 102912 |", None),
    ("epoch 001:    100 / 1891 loss=9.823", None),
    ("", None),
])
def test_parse_progress_bar(line, expected):
    assert parse_progress_bar(line) == expected


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=300))
def test_scanners_never_raise(line):
    record = scan_events(line)
    assert record is None or (isinstance(record, Record) and record.event in (OOM, OVERFLOW))
    progress = parse_progress_bar(line)
    assert progress is None or all(isinstance(n, int) and n >= 0 for n in progress)


@pytest.mark.parametrize("line", [
    " " * (1 << 20),
    "| 1/" * (1 << 18),
    "|        1" * (1 << 17),
    "OutOfMemoryError:" * (1 << 16),
    "x" * (10 << 20),
])
def test_scanners_stay_linear_on_long_lines(line):
    started = time.perf_counter()
    scan_events(line)
    parse_progress_bar(line)
    assert time.perf_counter() - started < 5.0
