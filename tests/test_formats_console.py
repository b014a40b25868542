"""Console dialect parsers, against logs written the way each framework writes them."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialect_checks import assert_only_its_owner_reads, payloads
from exporter.logs.envelopes import Envelopes
from exporter.logs.formats import CONSOLE_FORMATS, Kind, ParseError, Record
from exporter.logs.formats.deepspeed import DeepSpeed
from exporter.logs.formats.fairseq import Fairseq
from exporter.logs.formats.hf_console import HuggingFaceConsole
from exporter.logs.formats.megatron import Megatron
from exporter.logs.formats.nanogpt import NanoGPT
from exporter.logs.formats.regex import RegexFormat
from exporter.logs.formats.torchtune import Torchtune

FIXTURES = Path(__file__).parent / "fixtures" / "console"
NAN = float("nan")
INF = float("inf")
GIB = 1024**3

# Which dialect wrote each fixture (None: no metrics at all, only an event).
OWNER = {
    "hf_transformers4.log": "huggingface",
    "hf_transformers5.log": "huggingface",
    "nanogpt.log": "nanogpt",
    "megatron.log": "megatron",
    "deepspeed.log": "deepspeed",
    "torchtune.log": "torchtune",
    "fairseq.log": "fairseq",
    "fairseq_hydra_json.log": "fairseq",
    "oom_traceback.log": None,
}


def payload(line: str) -> str:
    """A line as a dialect gets it: what a launcher or Python logging wrapped around it taken off."""
    (unwrapped,) = Envelopes().unwrap(line)
    return unwrapped


def fixture_lines(name: str) -> list[str]:
    return payloads((FIXTURES / name).read_text(encoding="utf-8"))


def comparable(record: Record) -> tuple:
    """A record as plain data, NaN made comparable (NaN != NaN would fail every equality)."""
    values = {k: ("NaN" if math.isnan(v) else v) for k, v in record.values.items()}
    return (record.kind, record.step, values, record.meta, record.progress, record.event)


def rec(kind, step, values, progress=None, meta=None) -> tuple:
    return comparable(Record(values=values, kind=kind, step=step, progress=progress, meta=meta or {}))


def parse_all(parser, name: str) -> list[tuple]:
    out = []
    for line in fixture_lines(name):
        out.extend(comparable(r) for r in parser.parse(line))
    return out


def test_every_fixture_has_an_owner():
    assert sorted(p.name for p in FIXTURES.glob("*.log")) == sorted(OWNER)


# --------------------------------------------------------------------------- Hugging Face


def test_hf_transformers4_fixture():
    T, E, S = Kind.TRAIN, Kind.EVAL, Kind.SUMMARY
    assert parse_all(HuggingFaceConsole(), "hf_transformers4.log") == [
        rec(T, None, {}, (0, 870)),  # bar glued to a DeepSpeed OVERFLOW line: progress only
        rec(T, None, {"loss": 3.9812, "grad_norm": 4.851532459259033,
                      "learning_rate": 4.9425287356321845e-05, "epoch": 0.03}, (10, 870)),
        rec(T, None, {"loss": 3.7205, "grad_norm": NAN,
                      "learning_rate": 4.885057471264368e-05, "epoch": 0.07}, (20, 870)),
        rec(T, None, {"loss": 3.6431, "grad_norm": INF,
                      "learning_rate": 4.827586206896552e-05, "epoch": 0.1}, (30, 870)),
        rec(T, None, {}, (290, 870)),
        rec(T, None, {}, (0, 37)),  # the evaluation loop's own bar
        rec(T, None, {}, (18, 37)),
        rec(T, None, {}, (37, 37)),
        rec(E, None, {"eval_loss": 3.2154, "eval_accuracy": 0.4123, "eval_runtime": 4.3551,
                      "eval_samples_per_second": 67.6, "eval_steps_per_second": 8.496,
                      "epoch": 1.0}),
        rec(T, None, {"loss": 3.3018, "grad_norm": 1.9034371376037598,
                      "learning_rate": 3.275862068965517e-05, "epoch": 1.03}, (300, 870)),
        rec(S, None, {"train_runtime": 351.2265, "train_samples_per_second": 19.799,
                      "train_steps_per_second": 2.477, "train_loss": 3.30167236328125,
                      "epoch": 3.0}, (870, 870)),
        rec(T, None, {}, (870, 870)),
    ]


def test_hf_transformers5_fixture_quoted_values_and_carriage_returns():
    T, E = Kind.TRAIN, Kind.EVAL
    assert parse_all(HuggingFaceConsole(), "hf_transformers5.log") == [
        rec(T, None, {}, (0, 500)),
        rec(T, None, {}, (1, 500)),
        rec(T, None, {}, (2, 500)),
        rec(T, None, {}, (50, 500)),
        # tqdm.write cleared the bar first: the dict stands alone.
        rec(T, None, {"loss": 2.564, "grad_norm": 1.873, "learning_rate": 4.5e-05,
                      "epoch": 0.5, "num_input_tokens_seen": 409600.0}),
        rec(T, None, {}, (50, 500)),
        rec(T, None, {"loss": 2.101, "grad_norm": NAN, "learning_rate": 4e-05, "epoch": 1.0,
                      "num_input_tokens_seen": 819200.0}, (100, 500)),
        rec(T, None, {}, (100, 500)),
        rec(T, None, {}, (0, 13)),
        rec(T, None, {}, (8, 13)),
        rec(E, None, {"eval_loss": 2.05, "eval_runtime": 1.912, "eval_samples_per_second": 52.3,
                      "eval_steps_per_second": 6.799, "epoch": 1.0}),
        rec(T, None, {}, (100, 500)),
        rec(T, None, {"loss": 1.987, "grad_norm": INF, "learning_rate": 3.5e-05, "epoch": 1.5,
                      "num_input_tokens_seen": 1228800.0}, (150, 500)),
        rec(T, None, {}, (151, 500)),
    ]


def test_hf_nan_is_kept_as_nan():
    [record] = HuggingFaceConsole().parse(
        "{'loss': nan, 'grad_norm': 'nan', 'learning_rate': -inf, 'epoch': 0.5}")
    assert math.isnan(record.values["loss"])
    assert math.isnan(record.values["grad_norm"])
    assert record.values["learning_rate"] == -INF
    assert record.step is None


def test_hf_glued_bar_example_from_the_contract():
    line = (" 10%|█         | 10/100 [00:01<00:09,  9.5it/s]"
            "{'loss': 2.31, 'grad_norm': 1.2, 'learning_rate': 4.5e-05, 'epoch': 0.5}")
    assert [comparable(r) for r in HuggingFaceConsole().parse(line)] == [
        rec(Kind.TRAIN, None, {"loss": 2.31, "grad_norm": 1.2, "learning_rate": 4.5e-05,
                               "epoch": 0.5}, (10, 100)),
    ]


def test_hf_non_numeric_values_are_skipped_not_errors():
    line = ("{'loss': 1.5, 'note': 'abc', 'extra': None, 'flag': True, 'sizes': [1, 2, {'a': 3}], "
            "'pair': (1, 2), 'x': np.float32(0.25), 'gn': tensor(0.7, device='cuda:0'), "
            "\"it's\": 3, 'epoch': 2}")
    [record] = HuggingFaceConsole().parse(line)
    assert record.values == {"loss": 1.5, "x": 0.25, "gn": 0.7, "it's": 3.0, "epoch": 2.0}
    assert record.kind is Kind.TRAIN


def test_hf_truncated_dict_is_a_parse_error():
    with pytest.raises(ParseError):
        HuggingFaceConsole().parse("{'loss': 2.31, 'grad_norm': 1.2, 'learn")
    with pytest.raises(ParseError):
        HuggingFaceConsole().parse(" 30%|███       | 151/500 [01:05<02:22,  2.45it/s]{'loss': '1.95', 'grad_norm': '0.8")


@pytest.mark.parametrize("line", [
    "{'model_type': 'llama', 'hidden_size': 4096}",  # a printed config, not Trainer logs
    "{'input_ids': [1, 2, 3], 'attention_mask': [1, 1, 1]}",
    "INFO:torchtune.utils._logging: Profiler config after instantiation: {'enabled': False}",
    "[2024-05-01 10:00:03,001] [INFO] [config.py:1001:print]   optimizer_params ...... {'lr': 0.001}",
    "logs = {'loss': 2.0, 'epoch': 1.0}",  # the dict quoted inside another message
    "{'truncated config': ",
    "",
    "   ",
])
def test_hf_ignores_what_is_not_trainer_output(line):
    assert HuggingFaceConsole().parse(line) == []


def test_hf_bar_only_gives_progress_and_no_values():
    [record] = HuggingFaceConsole().parse(" 45%|████▌     | 450/1000 [01:02<01:16,  7.21it/s]")
    assert record.progress == (450, 1000)
    assert record.values == {} and record.meta == {} and record.step is None


def test_hf_step_key_becomes_the_step():
    [record] = HuggingFaceConsole().parse("{'loss': 1.0, 'step': 40, 'epoch': 0.2}")
    assert record.step == 40 and record.values == {"loss": 1.0, "epoch": 0.2}


def test_hf_test_prefixed_metrics_are_eval():
    [record] = HuggingFaceConsole().parse("{'test_loss': 1.9, 'test_runtime': 3.2, 'epoch': 3.0}")
    assert record.kind is Kind.EVAL


# --------------------------------------------------------------------------- nanoGPT


def test_nanogpt_fixture():
    T, E = Kind.TRAIN, Kind.EVAL
    assert parse_all(NanoGPT(), "nanogpt.log") == [
        rec(E, 0, {"train loss": 4.2874, "val loss": 4.2823}),
        # mfu is the -1 placeholder for the first iterations: dropped, not stored as -1.0.
        rec(T, 0, {"loss": 4.2654, "iter_time_seconds": 29.67421}),
        rec(T, 10, {"loss": 3.2454, "iter_time_seconds": 0.01423}),
        rec(T, 20, {"loss": 2.7877, "iter_time_seconds": 0.01451, "mfu": 0.2568}),
        rec(T, 30, {"loss": 2.6163, "iter_time_seconds": 0.01448, "mfu": 0.2569}),
        rec(T, 240, {"loss": NAN, "iter_time_seconds": 0.01436, "mfu": 0.259}),
        rec(E, 250, {"train loss": 1.9695, "val loss": 2.0652}),
        rec(T, 250, {"loss": 2.0392, "iter_time_seconds": 3.13296, "mfu": 0.2341}),
    ]


def test_nanogpt_exact_units():
    [record] = NanoGPT().parse("iter 100: loss 2.3000, time 50.00ms, mfu 30.00%")
    assert record.values == {"loss": 2.3, "iter_time_seconds": 0.05, "mfu": 0.3}
    assert record.step == 100 and record.kind is Kind.TRAIN


def test_nanogpt_fork_fields_and_launcher_prefix():
    [record] = NanoGPT().parse(payload("[default0]:iter 7: loss 3.1000, time 12.00ms, mfu 1.50%, grad_norm 0.412"))
    assert record.values == {"loss": 3.1, "iter_time_seconds": 0.012, "mfu": 0.015, "grad_norm": 0.412}
    assert record.step == 7


@pytest.mark.parametrize("line", [
    "iter 100: loss abc, time 50.00ms, mfu 30.00%",
    "iter 100: loss ",
    "step 2000: train loss 2.1000",
    "step 2000: train loss 2.1000, val loss ??",
])
def test_nanogpt_broken_lines_are_parse_errors(line):
    with pytest.raises(ParseError):
        NanoGPT().parse(line)


@pytest.mark.parametrize("line", [
    "Step 10 | loss:2.3",
    "step 10, loss: 2.3",
    "eval_interval = 250",
    "saving checkpoint to out",
    "number of parameters: 10.65M",
])
def test_nanogpt_ignores_other_lines(line):
    assert NanoGPT().parse(line) == []


# --------------------------------------------------------------------------- Megatron


def _megatron_train(step, values):
    return rec(Kind.TRAIN, step, values, meta={"max_steps": 250000})


def test_megatron_fixture_with_a_nan_iteration():
    common = {"global batch size": 512.0, "loss scale": 1.0, "number of skipped iterations": 0.0}
    assert parse_all(Megatron(), "megatron.log") == [
        _megatron_train(100, {"consumed samples": 51200.0, "elapsed time per iteration (ms)": 741.2,
                              "throughput per GPU (TFLOP/s/GPU)": 197.6, "learning rate": 1.5e-04,
                              "lm loss": 7.914452, "grad norm": 2.374,
                              "number of nan iterations": 0.0, **common}),
        _megatron_train(200, {"consumed samples": 102400.0, "elapsed time per iteration (ms)": 739.8,
                              "throughput per GPU (TFLOP/s/GPU)": 198.0, "learning rate": 1.5e-04,
                              "lm loss": 6.203881, "grad norm": 1.021,
                              "number of nan iterations": 0.0, **common}),
        # lm loss was dropped by Megatron (a NaN average is not > 0): restored as NaN.
        _megatron_train(300, {"consumed samples": 153600.0, "elapsed time per iteration (ms)": 740.5,
                              "throughput per GPU (TFLOP/s/GPU)": 197.8, "learning rate": 1.5e-04,
                              "lm loss": NAN, "grad norm": NAN,
                              "number of nan iterations": 1.0, **common}),
        _megatron_train(400, {"consumed samples": 204800.0, "elapsed time per iteration (ms)": 741.0,
                              "throughput per GPU (TFLOP/s/GPU)": 197.7, "learning rate": 1.5e-04,
                              "lm loss": 5.412309, "grad norm": 0.874,
                              "number of nan iterations": 0.0, **common}),
        rec(Kind.EVAL, 500, {"lm loss value": 5.201341, "lm loss PPL": 181.5046}),
        _megatron_train(500, {"consumed samples": 256000.0, "elapsed time per iteration (ms)": 790.4,
                              "throughput per GPU (TFLOP/s/GPU)": 185.3, "learning rate": 1.499999e-04,
                              "lm loss": 5.137702, "grad norm": 0.811,
                              "number of nan iterations": 0.0, **common}),
        rec(Kind.EVAL, 500, {"lm loss value": 5.198764, "lm loss PPL": 181.0375}),
        rec(Kind.SUMMARY, 500, {"lm loss value": 5.230918, "lm loss PPL": 186.9531}),
    ]


def test_megatron_nan_loss_is_nan():
    [record] = Megatron().parse(
        "iteration      300/  250000 | learning rate: 1.500000E-04 | loss scale: 1.0 | "
        "grad norm: nan | number of skipped iterations:   0 | number of nan iterations:   1 |")
    assert math.isnan(record.values["lm loss"]) and math.isnan(record.values["grad norm"])
    assert record.step == 300 and record.meta == {"max_steps": 250000}


def test_megatron_present_loss_is_not_overwritten_by_nan_count():
    [record] = Megatron().parse(
        "iteration 10/ 20 | lm loss: 2.0E+00 | number of nan iterations:   1 |")
    assert record.values["lm loss"] == 2.0


def test_megatron_deepspeed_variant_without_timestamp():
    line = ("iteration      199/  317892 | consumed samples:       152832 | consumed tokens:    625999872 | "
            "elapsed time per iteration (ms): 14287.5 | learning rate: 2.407E-04 | global batch size:   768 | "
            "lm loss: 5.905366E+00 | loss scale: 8192.0 | actual seqlen:  4096 | number of skipped iterations:   0 | "
            "number of nan iterations:   0 | samples per second: 53.753 | tokens per gpu per second (tgs): 1146.733 | "
            "TFLOPs: 69.85 |")
    [record] = Megatron().parse(line)
    assert record.step == 199 and record.meta == {"max_steps": 317892}
    assert record.values["lm loss"] == 5.905366
    assert record.values["tokens per gpu per second (tgs)"] == 1146.733
    assert record.values["TFLOPs"] == 69.85
    assert record.values["consumed tokens"] == 625999872.0


def test_megatron_launcher_prefix_running_averages_and_clock_values():
    line = ("[default3]: [2026-01-02 03:04:05] iteration       80/     100 | "
            "compute per GPU (TFLOP/s/GPU): 496.3 (avg 496.1) | tokens/s/GPU inst/harmonic mean: 9640.7/9629.8 | "
            "ETA Time: 1:02:03 | lm loss: 3.0E+00 |")
    [record] = Megatron().parse(line)
    assert record.values == {"compute per GPU (TFLOP/s/GPU)": 496.3, "lm loss": 3.0}
    assert record.step == 80


@pytest.mark.parametrize("line, kind, step", [
    (" validation loss at iteration 500 | lm loss value: 2.201E+00 | lm loss PPL: 9.034E+00 | ", Kind.EVAL, 500),
    ("validation loss at iteration 500 on validation set | lm loss value: 2.201E+00 | ", Kind.EVAL, 500),
    ("validation loss at iteration 500 on test set | lm loss value: 2.201E+00 | ", Kind.SUMMARY, 500),
    ("validation loss at the end of training for val data | lm loss value: 2.201E+00 | ", Kind.EVAL, None),
    ("validation loss at the end of training for test data | lm loss value: 2.201E+00 | ", Kind.SUMMARY, None),
])
def test_megatron_validation_variants(line, kind, step):
    [record] = Megatron().parse(line)
    assert (record.kind, record.step, record.values["lm loss value"]) == (kind, step, 2.201)


@pytest.mark.parametrize("line", [
    "iteration 10/ 20 | garbage without colon |",
    "validation loss at iteration 5 | lm loss value: oops |",
])
def test_megatron_unreadable_lines_are_parse_errors(line):
    with pytest.raises(ParseError):
        Megatron().parse(line)


@pytest.mark.parametrize("line", [
    "[Rank 0] (after 100 iterations) memory (MB) | allocated: 14273.8 | max allocated: 35188.2 |",
    "  train_iters ..................................... 250000",
    "Saving best validation loss at step 5 | loss: 1.0",
    "[after training is done] datetime: 2024-05-01 10:05:01",
])
def test_megatron_ignores_other_lines(line):
    assert Megatron().parse(line) == []


# --------------------------------------------------------------------------- DeepSpeed


def test_deepspeed_fixture():
    T = Kind.TRAIN
    assert parse_all(DeepSpeed(), "deepspeed.log") == [
        rec(T, 10, {"skipped": 2.0, "lr": 0.00015}),
        rec(T, 10, {"epoch": 0.0, "micro_step": 10.0, "RunningAvgSamplesPerSec": 45.21884516286468,
                    "CurrSamplesPerSec": 46.10375011735436,
                    "mem_allocated_bytes": float(round(4.5 * GIB)),
                    "max_mem_allocated_bytes": float(round(6.1 * GIB))}),
        rec(T, 20, {"skipped": 2.0, "lr": 0.0001499}),
        rec(T, 20, {"epoch": 0.0, "micro_step": 20.0, "RunningAvgSamplesPerSec": 45.7310427,
                    "CurrSamplesPerSec": 47.002,
                    "mem_allocated_bytes": float(round(4.51 * GIB)),
                    "max_mem_allocated_bytes": float(round(6.12 * GIB))}),
        rec(T, 30, {"skipped": 3.0, "lr": 0.0001498}),
    ]


def test_deepspeed_memory_is_bytes():
    [record] = DeepSpeed().parse(
        "epoch=0/micro_step=10/global_step=10, RunningAvgSamplesPerSec=45.2, CurrSamplesPerSec=46.1, "
        "MemAllocated=4.5GB, MaxMemAllocated=6.1GB")
    assert record.values["mem_allocated_bytes"] == 4831838208.0
    assert record.values["max_mem_allocated_bytes"] == 6549825126.0
    assert record.step == 10 and "MemAllocated" not in record.values


def test_deepspeed_variants():
    [first] = DeepSpeed().parse("rank:0 step=5, skipped=0, lr=0.0003, mom=0.9")  # a patched reporter
    assert first.values == {"skipped": 0.0, "lr": 0.0003} and first.step == 5
    [empty] = DeepSpeed().parse("[Rank 0] step=5, skipped=0, lr=[], mom=[]")  # no optimizer
    assert empty.values == {"skipped": 0.0}
    [inf] = DeepSpeed().parse("epoch=0/micro_step=2/global_step=2, RunningAvgSamplesPerSec=-inf, "
                              "CurrSamplesPerSec=40.0, MemAllocated=1.0GB, MaxMemAllocated=1.0GB")
    assert inf.values["RunningAvgSamplesPerSec"] == -INF
    [vm] = DeepSpeed().parse("epoch=1/micro_step=30/global_step=30, vm %: 41.2, swap %: 0.0")
    assert vm.values == {"epoch": 1.0, "micro_step": 30.0, "vm %": 41.2, "swap %": 0.0}


def test_deepspeed_lr_cut_in_half_is_a_parse_error():
    with pytest.raises(ParseError):
        DeepSpeed().parse("[Rank 0] step=10, skipped=0, lr=[0.0001, 0.00")


@pytest.mark.parametrize("line", [
    "[2024-05-01 10:00:05,100] [INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "[2024-05-01 10:00:02,345] [INFO] [logging.py:96:log_dist] [Rank 0] DeepSpeed info: version=0.14.2",
    "  zero_config .................. stage=2 contiguous_gradients=True",
])
def test_deepspeed_ignores_other_lines(line):
    assert DeepSpeed().parse(line) == []


# --------------------------------------------------------------------------- torchtune


def test_torchtune_fixture_with_glued_bars():
    T = Kind.TRAIN
    mem = {"peak_memory_alloc": 10.2, "peak_memory_reserved": 12.42}
    assert parse_all(Torchtune(), "torchtune.log") == [
        rec(T, 1, {"loss": 1.7429368495941162, "lr": 2e-05,
                   "tokens_per_second_per_gpu": 1450.2623291015625, "peak_memory_active": 10.18,
                   "peak_memory_alloc": 10.18, "peak_memory_reserved": 12.42}, (1, 3235)),
        rec(T, 1, {"epoch": 1.0, "loss": 1.7429368495941162}, (1, 3235)),
        rec(T, 2, {"loss": 1.6103515625, "lr": 2e-05, "tokens_per_second_per_gpu": 1873.551513671875,
                   "peak_memory_active": 10.2, **mem}, (2, 3235)),
        rec(T, 2, {"epoch": 1.0, "loss": 1.6103515625}, (2, 3235)),
        rec(T, 3, {"loss": NAN, "lr": 2e-05, "tokens_per_second_per_gpu": 1901.0,
                   "peak_memory_active": 10.2, **mem}, (3, 3235)),
        rec(T, 3, {"epoch": 1.0, "loss": NAN}, (3, 3235)),
        rec(T, 4, {"epoch": 1.0, "loss": 1.5849609375}, (4, 3235)),
        rec(T, 5, {"loss": 1.55078125, "lr": 2e-05, "tokens_per_second_per_gpu": 1932.7,
                   "peak_memory_active": 10.2, **mem}, (5, 3235)),
    ]


def test_torchtune_disk_logger_line():
    [record] = Torchtune().parse("Step 10 | loss:2.3045 lr:2e-05 tokens_per_second_per_gpu:1523.4 "
                                 "peak_memory_active:10.2 ")
    assert record.values == {"loss": 2.3045, "lr": 2e-05, "tokens_per_second_per_gpu": 1523.4,
                             "peak_memory_active": 10.2}
    assert record.step == 10 and record.kind is Kind.TRAIN and record.progress is None


def test_torchtune_tensor_values_and_single_metric_lines():
    [record] = Torchtune().parse("Step 4 | loss:tensor(2.3045, device='cuda:0') lr:2e-05 note:abc ")
    assert record.values == {"loss": 2.3045, "lr": 2e-05}
    [single] = Torchtune().parse("Step 4 | grad_norm:0.91")
    assert single.values == {"grad_norm": 0.91}


def test_torchtune_validation_names_make_an_eval_record():
    [record] = Torchtune().parse("Step 100 | val_loss:1.6012 ")
    assert record.kind is Kind.EVAL and record.values == {"val_loss": 1.6012}


@pytest.mark.parametrize("line", ["Step 10 | ", "Step 10 | loss:", "Step 10 | loss:abc"])
def test_torchtune_unreadable_lines_are_parse_errors(line):
    with pytest.raises(ParseError):
        Torchtune().parse(line)


@pytest.mark.parametrize("line", [
    "INFO:torchtune.utils._logging:Optimizer is initialized.",
    "  0%|          | 0/3235 [00:00<?, ?it/s]",
    "step 10 | loss 2.0",
    "log_every_n_steps: 1",
])
def test_torchtune_ignores_other_lines(line):
    assert Torchtune().parse(line) == []


# --------------------------------------------------------------------------- fairseq


def test_fairseq_simple_fixture():
    T, E, S = Kind.TRAIN, Kind.EVAL, Kind.SUMMARY
    assert parse_all(Fairseq(), "fairseq.log") == [
        rec(T, 100, {"loss": 9.823, "nll_loss": 9.1, "ppl": 548.73, "wps": 15234.5, "ups": 4.1,
                     "wpb": 3712.0, "bsz": 128.0, "lr": 1.25e-05, "gnorm": 2.034, "clip": 0.0,
                     "loss_scale": 64.0, "train_wall": 24.0, "gb_free": 10.2, "wall": 26.0,
                     "epoch": 1.0}, (100, 1891)),
        rec(T, 200, {"loss": 8.911, "nll_loss": 8.302, "ppl": 315.6, "wps": 15301.9, "ups": 4.12,
                     "wpb": 3714.2, "bsz": 127.6, "lr": 2.5e-05, "gnorm": 1.441, "clip": 0.0,
                     "loss_scale": 64.0, "train_wall": 24.0, "gb_free": 10.2, "wall": 50.0,
                     "epoch": 1.0}, (200, 1891)),
        rec(E, 1891, {"valid_loss": 8.532, "valid_nll_loss": 7.8, "valid_ppl": 222.6,
                      "valid_wps": 45000.0, "valid_wpb": 3700.0, "valid_bsz": 128.0, "epoch": 1.0}),
        rec(S, 1891, {"loss": 9.501, "nll_loss": 8.9, "ppl": 478.1, "wps": 15100.2, "ups": 4.07,
                      "wpb": 3712.0, "bsz": 128.0, "lr": 0.000236375, "gnorm": 1.512, "clip": 0.0,
                      "loss_scale": 64.0, "train_wall": 450.0, "gb_free": 10.2, "wall": 470.0,
                      "epoch": 1.0}),
        rec(T, 2000, {"loss": 7.64, "nll_loss": 6.937, "ppl": 122.56, "wps": 15288.3, "ups": 4.12,
                      "wpb": 3709.9, "bsz": 128.3, "lr": 0.00025, "gnorm": 1.203, "clip": 0.0,
                      "loss_scale": 64.0, "train_wall": 24.0, "gb_free": 10.2, "wall": 494.0,
                      "epoch": 2.0}, (109, 1891)),
    ]


def test_fairseq_hydra_json_fixture_matches_the_simple_naming():
    T, E, S = Kind.TRAIN, Kind.EVAL, Kind.SUMMARY
    assert parse_all(Fairseq(), "fairseq_hydra_json.log") == [
        rec(T, 200, {"epoch": 1.0, "update": 0.154, "loss": 6.691, "ntokens": 1409.49,
                     "nsentences": 8.0, "prob_perplexity": 49.172, "code_perplexity": 48.912,
                     "temp": 1.999, "loss_0": 6.561, "loss_1": 0.128, "loss_2": 0.002,
                     "accuracy": 0.07071, "wps": 2156.3, "ups": 1.53, "wpb": 1409.5, "bsz": 8.0,
                     "lr": 3.125e-06, "gnorm": 1.003, "loss_scale": 128.0, "train_wall": 126.0,
                     "gb_free": 12.9, "wall": 131.0}),
        rec(E, 1298, {"epoch": 1.0, "valid_loss": 6.533, "valid_ntokens": 1385.2,
                      "valid_nsentences": 8.0, "valid_prob_perplexity": 51.38,
                      "valid_code_perplexity": 51.02, "valid_temp": 1.998, "valid_loss_0": 6.41,
                      "valid_loss_1": 0.121, "valid_loss_2": 0.002, "valid_accuracy": 0.08613,
                      "valid_wps": 6012.7, "valid_wpb": 1385.2, "valid_bsz": 8.0,
                      "valid_best_loss": 6.533}),
        # "train_train_wall" is the tag plus the stat "train_wall"; "train_wall" the tag plus "wall".
        rec(S, 1298, {"epoch": 1.0, "loss": 6.702, "ntokens": 1410.07, "nsentences": 8.0,
                      "accuracy": 0.0699, "wps": 2150.9, "ups": 1.53, "wpb": 1410.1, "bsz": 8.0,
                      "lr": 2.028e-05, "gnorm": 0.981, "loss_scale": 128.0, "train_wall": 846.0,
                      "gb_free": 12.9, "wall": 855.0}),
    ]


def test_fairseq_any_subset_is_valid_prefixed():
    [simple] = Fairseq().parse(payload("2024-05-01 10:05:44 | INFO | valid1 | epoch 003 | valid on 'valid1' subset "
                                       "| loss 4.1 | ppl 17.15 | num_updates 5673 | best_loss 4.1"))
    assert simple.kind is Kind.EVAL and simple.step == 5673
    assert simple.values == {"valid_loss": 4.1, "valid_ppl": 17.15, "valid_best_loss": 4.1, "epoch": 3.0}
    [as_json] = Fairseq().parse(payload('2024-05-01 10:05:44 | INFO | test | {"epoch": 3, "test_loss": "4.2", '
                                        '"test_num_updates": "5673"}'))
    assert as_json.kind is Kind.EVAL and as_json.values == {"epoch": 3.0, "valid_loss": 4.2}


def test_fairseq_pre_logging_releases():
    [record] = Fairseq().parse("| epoch 001:    100 / 1101 loss=10.210, nll_loss=9.7, ppl=831.8, "
                               "num_updates=100, lr=0.0001")
    assert record.step == 100 and record.progress == (100, 1101)
    assert record.values == {"loss": 10.21, "nll_loss": 9.7, "ppl": 831.8, "lr": 0.0001, "epoch": 1.0}


def test_fairseq_nan_and_list_stats():
    [record] = Fairseq().parse(payload("2024-05-01 09:58:31 | INFO | train_inner | epoch 001:    100 / 1891 "
                                       "loss=nan, ppl=inf, lrs=[0.1, 0.2], num_updates=100"))
    assert math.isnan(record.values["loss"]) and record.values["ppl"] == INF
    assert "lrs" not in record.values and record.step == 100


def test_fairseq_cut_json_is_a_parse_error():
    with pytest.raises(ParseError):
        Fairseq().parse(payload('[2024-05-01 09:31:40,877][train_inner][INFO] - {"epoch": 1, "update": 0.1, "lo'))


@pytest.mark.parametrize("line", [
    "2024-05-01 09:58:05 | INFO | fairseq.trainer | begin training epoch 1",
    "2024-05-01 10:13:21 | INFO | fairseq_cli.train | done training in 920.5 seconds",
    "2024-05-01 10:05:44 | INFO | fairseq.checkpoint_utils | Saved checkpoint checkpoints/checkpoint1.pt",
    "| epoch | loss | ppl |",  # a markdown table, not fairseq
    '2024-05-01 10:00:00 | INFO | somewhere | {"a": 1}',
])
def test_fairseq_ignores_other_lines(line):
    assert Fairseq().parse(line) == []


# --------------------------------------------------------------------------- all dialects together


# Lines a training script printed itself among a framework's output, each with the one dialect
# that reads it: DeepSpeed's CIFAR-10 example prints its loss as PyTorch's tutorial does.
SCRIPTS_OWN_LINES = {("deepspeed.log", "[1,   200] loss: 2.117"): "key_value"}


@pytest.mark.parametrize("fixture", sorted(OWNER))
def test_no_dialect_claims_another_dialects_lines(fixture):
    """Every line of every fixture through every console parser: only the owner may find values
    (or run facts) in it, and no other dialect may even call it a broken line of its own; a
    general dialect may read only lines that the owner does not."""
    for number, line in enumerate(fixture_lines(fixture), 1):
        owner = SCRIPTS_OWN_LINES.get((fixture, line), OWNER[fixture])
        assert_only_its_owner_reads(line, owner, f"{fixture}:{number}")


@pytest.mark.parametrize("fixture", sorted(f for f, owner in OWNER.items() if owner))
def test_detection_order_locks_each_fixture_to_its_owner(fixture):
    """Auto-detection tries the console dialects in registry order and keeps the first that
    finds values; for each fixture that must be the dialect that wrote it."""
    parsers = {name: factory() for name, factory in CONSOLE_FORMATS.items()}
    for line in fixture_lines(fixture):
        for name, parser in parsers.items():
            try:
                records = parser.parse(line)
            except ParseError:
                continue
            if any(r.values for r in records):
                assert name == OWNER[fixture], f"{fixture} locked to {name} by {line!r}"
                return
    pytest.fail(f"nothing in {fixture} was recognised")


# --------------------------------------------------------------------------- regex format


def test_regex_format_groups_kinds_and_first_match():
    fmt = RegexFormat(
        [r"eval @ (?P<step>[\d,]+): (?P<val_loss>\S+)", r"step (?P<step>\d+) epoch (?P<epoch>\S+) "
         r"loss=(?P<loss>\S+)(?: note=(?P<note>\S+))?"],
        ["eval", "train"],
    )
    assert fmt.name == "regex"
    [train] = fmt.parse("step 12 epoch 0.5 loss=nan note=warmup")
    assert train.kind is Kind.TRAIN and train.step == 12
    assert train.values["epoch"] == 0.5 and math.isnan(train.values["loss"]) and "note" not in train.values
    [evaluation] = fmt.parse("eval @ 1,200: 2.25")
    assert (evaluation.kind, evaluation.step, evaluation.values) == (Kind.EVAL, 1200, {"val_loss": 2.25})
    assert fmt.parse("nothing to see") == []


def test_regex_format_first_matching_pattern_wins():
    fmt = RegexFormat([r"loss (?P<loss>\S+)", r"(?P<any>\d+)"], ["train", "eval"])
    assert [comparable(r) for r in fmt.parse("loss 2.5 at 7")] == [rec(Kind.TRAIN, None, {"loss": 2.5})]


def test_regex_format_default_kind_and_summary():
    assert RegexFormat([r"loss (?P<loss>\S+)"]).parse("loss 1.5")[0].kind is Kind.TRAIN
    assert RegexFormat([r"final (?P<acc>\S+)"], ["summary"]).parse("final 0.9")[0].kind is Kind.SUMMARY


def test_regex_format_unreadable_step_is_a_parse_error():
    with pytest.raises(ParseError):
        RegexFormat([r"step (?P<step>\S+) loss (?P<loss>\S+)"]).parse("step 1.5 loss 2")


def test_regex_format_match_without_numbers_is_nothing():
    assert RegexFormat([r"status (?P<state>\w+)"]).parse("status running") == []


@pytest.mark.parametrize("patterns, kinds, fragment", [
    (["loss (?P<loss>[0-9"], None, "loss (?P<loss>[0-9"),
    (["loss ([0-9.]+)"], None, "no named group"),
    (["(?P<a>x)", "(?P<b>y)"], ["train"], "2 patterns"),
    (["(?P<a>x)"], ["validation"], "'validation'"),
])
def test_regex_format_bad_configuration_is_a_one_line_value_error(patterns, kinds, fragment):
    with pytest.raises(ValueError) as raised:
        RegexFormat(patterns, kinds)
    message = str(raised.value)
    assert "\n" not in message and fragment in message
    assert not isinstance(raised.value, ParseError)


# --------------------------------------------------------------------------- robustness

ALL_PARSERS = [factory() for factory in CONSOLE_FORMATS.values()] + [
    RegexFormat([r"step (?P<step>\d+) loss (?P<loss>\S+)"])
]
# Pieces that steer the parsers deep into their code paths, mixed with arbitrary text.
TOKENS = [
    "{'", "'loss'", "'eval_loss'", "'train_runtime'", ": ", ", ", "}", "nan", "inf", "-inf", "'2.5'",
    "np.float64(", "tensor(", ")", "[", "]", "(", "\\", '"', " iteration ", "/ ", " | ", "lm loss: ",
    "number of nan iterations: ", "validation loss at iteration ", " on test set", "step=", ", skipped=",
    ", lr=[", "epoch=", "/micro_step=", "/global_step=", "MemAllocated=", "GB", "Step ", "loss:",
    "1|2|Loss: ", "%|", "| 10/100 [00:01<00:09,  9.5it/s]", "iter ", ": loss ", ", time ", "ms",
    ", mfu ", "%", "step ", ": train loss ", ", val loss ", "2024-05-01 10:00:00 | INFO | ",
    "train_inner | ", "valid | ", "train | ", "epoch 001:    ", " / ", "epoch 001 | ",
    "valid on 'valid' subset", "num_updates=", "=", "[2024-05-01 10:00:00,123][train_inner][INFO] - ",
    '{"epoch": 1, ', '"num_updates": "5"', "\r", "\x00", "\ud800", "1e309", "1.0E+00", "0", "-", "12",
]
fuzz_text = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.text(st.characters(exclude_categories=()), max_size=8)),
    max_size=40,
).map("".join)


def _only_parse_errors(line: str, limit: float = 1.0) -> None:
    for parser in ALL_PARSERS:
        started = time.perf_counter()
        try:
            records = parser.parse(line)
        except ParseError:
            records = []
        assert time.perf_counter() - started < limit, f"{parser.name} slow on {line[:80]!r}"
        for record in records:
            assert isinstance(record, Record)
            assert all(isinstance(k, str) and isinstance(v, float) for k, v in record.values.items())
            assert record.step is None or isinstance(record.step, int)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(exclude_categories=()), max_size=300))
def test_arbitrary_text_raises_nothing_but_parse_error(line):
    _only_parse_errors(line)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_text)
def test_dialect_shaped_noise_raises_nothing_but_parse_error(line):
    _only_parse_errors(line)


REAL_LINES = sorted({line for name in OWNER for line in fixture_lines(name) if line.strip()})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_lines_raise_nothing_but_parse_error(data):
    line = data.draw(st.sampled_from(REAL_LINES))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(line)))
        action = data.draw(st.sampled_from(["cut", "insert", "replace", "drop", "double"]))
        if action == "cut":
            line = line[:at]
        elif action == "insert":
            line = line[:at] + data.draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5))) + line[at:]
        elif action == "replace" and at < len(line):
            line = line[:at] + data.draw(st.characters(exclude_categories=())) + line[at + 1:]
        elif action == "drop":
            line = line[:at] + line[at + data.draw(st.integers(1, 10)):]
        else:
            line = line[:at] + line[at:] * 2
    _only_parse_errors(line)


ONE_MB = (1 << 20) - 100
HOSTILE_LINES = {
    "spaces": " " * ONE_MB,
    "tabs": "\t " * (ONE_MB // 2),
    "open_brackets": "[" * ONE_MB,
    "dict_keys": "{'loss': 1, " * (ONE_MB // 12),
    "dict_nesting": "{'loss': " + "[" * (ONE_MB - 20),
    "unterminated_string": "{'loss': '" + "x" * (ONE_MB - 20),
    "iteration_words": "iteration " * (ONE_MB // 10),
    "iteration_fields": "iteration 1/ 2 |" + " a: 1 |" * (ONE_MB // 8),
    "validation_words": "validation loss at " * (ONE_MB // 19),
    "bar_fragments": "| 1/" * (ONE_MB // 4),
    "bar_tails": ("[" + "x" * 150 + "it/s") * (ONE_MB // 155),
    "lr_list": "step=1, skipped=1, lr=[" + "1" * (ONE_MB - 30),
    "timer_fields": "epoch=0/micro_step=1/global_step=1" + ", a=1" * (ONE_MB // 6),
    "tensor_words": "Step 1 | " + "x:tensor( " * (ONE_MB // 11),
    "step_pairs": "Step 1 | " + "x:1 " * (ONE_MB // 4),
    "fairseq_pairs": "2024-05-01 10:00:00 | INFO | train_inner | epoch 001:    1 / 2 " + "a=1, " * (ONE_MB // 6),
    "fairseq_json_nesting": "2024-05-01 10:00:00 | INFO | valid | {" + '"a": [' * (ONE_MB // 8),
    "nanogpt_fields": "iter 1: loss 1.0" + ", a 1" * (ONE_MB // 5),
    "launcher_tags": "[default0]:" * (ONE_MB // 11),
    "digits": "1" * ONE_MB,
    "ten_megabytes": "{'loss': " + "9" * (10 << 20),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_hostile_long_lines_stay_linear(name):
    # Linear scans of ~1 MB take well under a second; backtracking would take hours.
    _only_parse_errors(HOSTILE_LINES[name], limit=10.0)
