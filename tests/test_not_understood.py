"""A log the exporter does not understand is loud, and what it has not seen is absent: a real
exporter process, read over HTTP, with logs written from the real runs' lines."""

from __future__ import annotations

from pathlib import Path

from conftest import value, wait_for

REAL = Path(__file__).parent / "fixtures" / "real"
HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")
WARNING = "none of the"  # the exporter's own log line, once per file


def real_lines(name: str) -> list[str]:
    return [line for line in (REAL / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def test_a_log_of_no_metrics_reads_0_and_is_said_once_with_its_first_lines(tmp_path, exporter_process):
    log = tmp_path / "job.log"
    noise = real_lines("noise/pip_install.log")
    append(log, (noise * (1000 // len(noise) + 1))[:1000])
    exporter = exporter_process("--log", str(log), *HW_OFF)
    metrics = exporter.metrics()
    assert value(metrics, "training_log_lines_total", source="job.log") == 1000
    assert value(metrics, "training_log_understood", source="job.log") == 0
    assert value(metrics, "training_validation_evals_since_best", source="job.log") is None

    append(log, noise)  # more of the same: said once, not again
    wait_for(lambda: value(exporter.metrics(), "training_log_lines_total", source="job.log") == 1000 + len(noise))
    output = exporter.stop()
    warnings = [line for line in output.splitlines() if WARNING in line]
    assert len(warnings) == 1, output
    assert "job.log" in warnings[0] and "Collecting requests==2.32.3" in warnings[0]
    assert "training-exporter inspect" in warnings[0]


def test_a_preamble_then_metrics_reads_understood_and_is_never_warned_about(tmp_path, exporter_process):
    """Before any line the gauge is absent; lines that are not metrics come first in every real
    log (0); it turns 1 with the first metrics line, and evaluations since best appear with the
    first evaluation, not before."""
    log = tmp_path / "train.log"
    log.write_text("")
    exporter = exporter_process("--log", str(log), *HW_OFF)
    assert value(exporter.metrics(), "training_log_up", source="train.log") == 1
    assert value(exporter.metrics(), "training_log_understood", source="train.log") is None

    append(log, real_lines("noise/transformers_warnings.log"))
    wait_for(lambda: value(exporter.metrics(), "training_log_understood", source="train.log") == 0)

    train_only, with_validation = real_lines("plain/key_equals.log")[:3], real_lines("plain/key_equals.log")[3]
    append(log, train_only)
    metrics = wait_for(lambda: (m := exporter.metrics()) and value(m, "training_step", source="train.log") == 30 and m)
    assert value(metrics, "training_log_understood", source="train.log") == 1
    assert value(metrics, "training_validation_evals_total", source="train.log") == 0
    assert value(metrics, "training_validation_evals_since_best", source="train.log") is None
    assert value(metrics, "training_validation_loss_best", source="train.log") is None

    append(log, [with_validation])  # step=40 loss=0.5267 val_loss=0.5181
    metrics = wait_for(lambda: (m := exporter.metrics()) and value(m, "training_step", source="train.log") == 40 and m)
    assert value(metrics, "training_validation_evals_since_best", source="train.log") == 0
    assert value(metrics, "training_validation_loss_best", source="train.log") == 0.5181
    assert WARNING not in exporter.stop()


def test_keras_nan_run_served_with_its_nans_and_no_step(exporter_process):
    exporter = exporter_process("--log", str(REAL / "keras" / "fit_verbose1_nan.log"), *HW_OFF)
    metrics = exporter.metrics()
    src = "fit_verbose1_nan.log"
    assert value(metrics, "training_log_format_info", source=src, format="keras") == 1
    assert value(metrics, "training_nonfinite_values_total", source=src, key="loss") == 3
    assert value(metrics, "training_nonfinite_values_total", source=src, key="validation_loss") == 3
    assert value(metrics, "training_validation_evals_total", source=src) == 5
    assert value(metrics, "training_validation_evals_since_best", source=src) == 3
    assert value(metrics, "training_epoch", source=src) == 5
    assert value(metrics, "training_step", source=src) is None  # Keras prints no global step
    assert value(metrics, "training_log_understood", source=src) == 1


def test_lightning_bar_is_never_taken_for_the_step(exporter_process):
    exporter = exporter_process("--log", str(REAL / "lightning" / "tqdm.log"), *HW_OFF)
    metrics = exporter.metrics()
    src = "tqdm.log"
    assert value(metrics, "training_step", source=src) is None
    assert value(metrics, "training_max_steps", source=src) is None
    assert value(metrics, "training_epoch", source=src) == 3
    assert value(metrics, "training_validation_evals_total", source=src) == 4


def test_event_file_and_trainer_state_under_other_names(exporter_process):
    exporter = exporter_process("--log", str(REAL / "detect" / "run1.tfevents"),
                                "--log", str(REAL / "detect" / "run1_trainer_state.json"), *HW_OFF)
    metrics = exporter.metrics()
    for source, fmt in (("run1.tfevents", "tensorboard"), ("run1_trainer_state.json", "trainer_state")):
        assert value(metrics, "training_log_format_info", source=source, format=fmt) == 1
        assert value(metrics, "training_step", source=source) == 12
        assert value(metrics, "training_validation_evals_total", source=source) == 3
