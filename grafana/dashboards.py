"""The Grafana dashboards, built with grafana-foundation-sdk (Grafana's own builder library).

    python grafana/dashboards.py          # write grafana/dashboards/*.json and the Kubernetes ConfigMap
    python grafana/dashboards.py --check  # exit 1 if a committed file differs from what this code makes

Three dashboards: one training run, the GPUs and host under it, and the ranks of one run spread
over many pods or nodes. They follow Grafana's dashboard linter: a ``datasource`` variable, ``job``
and ``instance`` (and ``source``) query variables on every selector, ``$__rate_interval`` in every
``rate()``, fixed uids (links and bookmarks survive a re-import).

Needs the ``dashboards`` extra: ``pip install -e '.[dashboards]'``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import yaml
from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as builder
from grafana_foundation_sdk.builders import prometheus as promql
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(HERE, "dashboards")
CONFIGMAP_FILE = os.path.join(ROOT, "deploy", "kubernetes", "grafana-dashboards.yaml")

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
ALL = model.VariableOption(selected=True, text="All", value="$__all")
STALL_SECONDS = 1800  # alert_rules/thresholds.yaml's stall_seconds, drawn as a threshold line

# Matchers every selector carries (the linter's target-job and target-instance rules).
RUN = 'job=~"$job", instance=~"$instance"'
TRAINING = RUN + ', source=~"$source"'
GPU = RUN + ', gpu=~"$gpu"'


# ---- variables ---------------------------------------------------------------------------

def datasource_variable() -> builder.DatasourceVariable:
    return builder.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, query: str, description: str) -> builder.QueryVariable:
    """A multi-value query variable in the linter's form: All means ``.+``, refreshed on time change."""
    return (builder.QueryVariable(name).label(name.capitalize()).description(description)
            .datasource(DATASOURCE).query(query)
            .multi(True).include_all(True).all_value(".+").current(ALL)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))


def job_variable() -> builder.QueryVariable:
    return label_variable("job", "label_values(training_exporter_build_info, job)",
                          "The Prometheus job: one training run (on Kubernetes, the Job's name).")


def instance_variable() -> builder.QueryVariable:
    return label_variable("instance", 'label_values(training_exporter_build_info{job=~"$job"}, instance)',
                          "One exporter: one pod or node of the run.")


def source_variable() -> builder.QueryVariable:
    return label_variable("source", f"label_values(training_log_up{{{RUN}}}, source)",
                          "One training log followed by the exporter.")


def gpu_variable() -> builder.QueryVariable:
    return label_variable("gpu", f"label_values(training_gpu_info{{{RUN}}}, gpu)", "GPU index (NVML's).")


# ---- panels --------------------------------------------------------------------------------

def query(expr: str, legend: str, instant: bool = False) -> promql.Dataquery:
    target = promql.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    return target.instant().format(PromQueryFormat.TABLE) if instant else target.range()


def _finish(panel, title: str, description: str, unit: str, targets: list[promql.Dataquery],
            width: int, height: int):
    for ref_id, target in zip("ABCDEFGH", targets):
        panel = panel.with_target(target.ref_id(ref_id))
    return panel.title(title).description(description).datasource(DATASOURCE).unit(unit).span(width).height(height)


def graph(title: str, description: str, unit: str, *targets: promql.Dataquery, width: int = 12,
          height: int = 8, stacked: bool = False, dashed: tuple[str, ...] = (), threshold: float | None = None):
    """A time series panel. ``dashed``: legend prefixes of series drawn as dashed reference lines."""
    panel = timeseries.Panel().line_width(1).fill_opacity(10 if stacked else 0).show_points(
        common.VisibilityMode.NEVER)
    if stacked:
        panel = panel.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    for name in dashed:
        panel = panel.override_by_regexp(f"^{name} .*", [model.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})])
    if threshold is not None:
        panel = (panel.thresholds(builder.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps([
                    model.Threshold(value=None, color="green"), model.Threshold(value=threshold, color="red")]))
                 .thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)))
    return _finish(panel, title, description, unit, list(targets), width, height)


def single(title: str, description: str, unit: str, *targets: promql.Dataquery, width: int = 4, height: int = 4,
           red_above: float | None = None):
    """A stat panel showing the latest value of each series."""
    panel = (stat.Panel().graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE)
             .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])))
    steps = [model.Threshold(value=None, color="text")]
    if red_above is not None:
        steps = [model.Threshold(value=None, color="green"), model.Threshold(value=red_above, color="red")]
    panel = panel.thresholds(builder.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
    return _finish(panel, title, description, unit, list(targets), width, height)


def ranking(title: str, description: str, unit: str, target: promql.Dataquery, width: int = 12, height: int = 8):
    """A bar gauge of the latest value per series, for comparing ranks at a glance."""
    panel = (bargauge.Panel().display_mode(common.BarGaugeDisplayMode.BASIC)
             .orientation(common.VizOrientation.HORIZONTAL).min(0)
             .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])))
    return _finish(panel, title, description, unit, [target], width, height)


class Board:
    """A dashboard under construction: numbers its panels, which Grafana needs to tell them apart."""

    def __init__(self, uid: str, title: str, description: str, variables: list) -> None:
        self._ids = itertools.count(1)
        self.dashboard = (builder.Dashboard(title).uid(uid).description(description)
                          .tags(["training", "training-exporter"]).editable().refresh("30s").time("now-3h", "now")
                          .tooltip(model.DashboardCursorSync.CROSSHAIR).timezone("browser"))
        for variable in variables:
            self.dashboard = self.dashboard.with_variable(variable)

    def row(self, title: str) -> Board:
        self.dashboard = self.dashboard.with_row(builder.Row(title).id(next(self._ids)))
        return self

    def add(self, *panels) -> Board:
        for panel in panels:
            self.dashboard = self.dashboard.with_panel(panel.id(next(self._ids)))
        return self

    def build(self) -> dict:
        return json.loads(json.dumps(self.dashboard.build(), cls=JSONEncoder))


def link(title: str, uid: str) -> builder.DashboardLink:
    return (builder.DashboardLink(title).type(model.DashboardLinkType.LINK).url(f"/d/{uid}")
            .include_vars(True).keep_time(True))


# ---- the dashboards ------------------------------------------------------------------------

def training_run() -> dict:
    def m(metric: str, extra: str = "") -> str:
        return f"{metric}{{{TRAINING}{', ' + extra if extra else ''}}}"

    tokens_seen = m("training_value", 'key="num_input_tokens_seen"')
    board = Board("training-exporter-run", "Training run",
                  "One training run as its logs tell it: loss, validation, throughput, progress and what went wrong.",
                  [datasource_variable(), job_variable(), instance_variable(), source_variable()])
    board.dashboard = (board.dashboard.link(link("GPUs and host", "training-exporter-hardware"))
                       .link(link("Ranks", "training-exporter-ranks")))
    board.row("Progress").add(
        single("Step", "Latest step the log reported.", "none", query(m("training_step"), "{{source}}"), width=3),
        single("Epoch", "Latest epoch (fractional where the framework logs it so).", "none",
               query(m("training_epoch"), "{{source}}"), width=3),
        single("ETA", "Steps left over the current step rate (needs the run's total steps in the log).", "s",
               query(m("training_eta_seconds"), "{{source}}"), width=3),
        single("Since last step", "Time since the step last advanced. TrainingStalled fires after "
               f"{STALL_SECONDS // 60} minutes while the process is alive.", "s",
               query(f"time() - {m('training_last_progress_timestamp_seconds')}", "{{source}}"),
               red_above=STALL_SECONDS),
        single("Best validation loss", "Best value so far of the monitored evaluation key, and its step.", "none",
               query(m("training_validation_loss_best"), "best {{source}}"),
               query(m("training_validation_best_step"), "at step {{source}}")),
        single("Evaluations since best", "Evaluations without improvement, against the configured patience: "
               "TrainingValidationPlateau fires when they meet.", "none",
               query(m("training_validation_evals_since_best"), "since best {{source}}"),
               query(m("training_validation_patience"), "patience {{source}}")),
        single("Epochs since best loss", "Epochs whose best training loss did not beat the best before, against "
               "the configured loss_patience: TrainingLossPlateau fires when they meet.", "none",
               query(m("training_loss_epochs_since_best"), "since best {{source}}"),
               query(m("training_loss_patience"), "patience {{source}}"), width=3),
    )
    board.row("Loss").add(
        graph("Loss", "Training loss, validation loss, and the best of each so far (dashed; the best training "
              "loss is the lowest of the epochs' best).", "none",
              query(m("training_loss"), "loss {{source}}"),
              query(m("training_validation_loss"), "validation {{source}}"),
              query(m("training_loss_best"), "best training {{source}}"),
              query(m("training_validation_loss_best"), "best validation {{source}}"),
              dashed=("best training", "best validation")),
        graph("Perplexity", "exp(loss), meaningful for language models trained with cross-entropy in nats.",
              "none", query(f"exp({m('training_loss')})", "train {{source}}"),
              query(f"exp({m('training_validation_loss')})", "validation {{source}}")),
        graph("Learning rate", "Latest learning rate the log reported.", "sci",
              query(m("training_learning_rate"), "{{source}}")),
        graph("Gradient norm", "Latest gradient norm; a NaN here often comes before a NaN loss.", "none",
              query(m("training_grad_norm"), "{{source}}")),
    )
    board.row("Throughput").add(
        graph("Steps per second", "Step rate over the step advances of the last five minutes.", "none",
              query(m("training_steps_per_second"), "{{source}}"), width=8),
        graph("Tokens per second", "The throughput the log reports; for Hugging Face runs with "
              "include_num_input_tokens_seen, the rate of num_input_tokens_seen.", "none",
              query(f"{m('training_tokens_per_second')}\nor\nsum without (key) "
                    f"(rate({tokens_seen}[$__rate_interval]))", "{{source}}"), width=8),
        graph("Time since last step", "Grows while the step does not advance; the red line is where "
              "TrainingStalled starts counting.", "s",
              query(f"time() - {m('training_last_progress_timestamp_seconds')}", "{{source}}"),
              width=8, threshold=STALL_SECONDS),
    )
    # Event counters are shown as running totals: a counter the exporter creates at its first
    # event (a key's first NaN) starts at 1, which increase() cannot see.
    board.row("Problems").add(
        graph("Non-finite values", "NaN or infinite values by key since the exporter started; a NaN "
              "grad_norm counts even when Hugging Face hides the NaN loss.", "none",
              query(m("training_nonfinite_values_total"), "{{source}} {{key}}"), width=6),
        graph("Out-of-memory errors", "Out-of-memory errors in the log since the exporter started.", "none",
              query(m("training_oom_events_total"), "{{source}}"), width=6),
        graph("Loss spikes and fp16 overflows", "Losses far above their recent median, and skipped "
              "mixed-precision steps, since the exporter started.", "none",
              query(m("training_loss_spikes_total"), "spikes {{source}}"),
              query(m("training_loss_scale_overflows_total"), "overflows {{source}}"), width=6),
        graph("Guard actions", "What the guard did to the training process since the exporter started, by rule "
              "and action (dry_run: decided, nothing done); no series when the guard is off.", "none",
              query(f"training_guard_actions_total{{{RUN}}}", "{{instance}} {{rule}} {{action}}"), width=6),
        _alerts_table(),
    )
    board.row("Log reading").add(
        graph("Lines read", "Log lines read per second, and lines of the format that could not be parsed.", "short",
              query(f"rate({m('training_log_lines_total')}[$__rate_interval])", "read {{source}}"),
              query(f"rate({m('training_log_parse_errors_total')}[$__rate_interval])", "unparsed {{source}}")),
        graph("Collectors", "1 when the collector's last scrape succeeded.", "bool",
              query(f"training_exporter_collector_success{{{RUN}}}", "{{instance}} {{collector}}")),
    )
    return board.build()


def _alerts_table():
    return _finish(table.Panel(), "Firing alerts",
                   "Alerts Prometheus fires now for these exporters (its ALERTS series); runbooks in docs/runbooks.md.",
                   "none", [query(f'ALERTS{{alertstate="firing", {RUN}}}', "{{alertname}}", instant=True)],
                   24, 6)


def hardware() -> dict:
    def g(metric: str, extra: str = "") -> str:
        return f"{metric}{{{GPU}{', ' + extra if extra else ''}}}"

    def h(metric: str, extra: str = "") -> str:
        return f"{metric}{{{RUN}{', ' + extra if extra else ''}}}"

    def rate(selector: str) -> str:
        return f"rate({selector}[$__rate_interval])"

    gpu = "{{instance}} GPU {{gpu}}"
    busy_cpu = h("training_host_cpu_seconds_total", 'mode!="idle"')
    board = Board("training-exporter-hardware", "Training GPUs and host",
                  "The GPUs (NVML), host, container and training process under a training run.",
                  [datasource_variable(), job_variable(), instance_variable(), gpu_variable()])
    board.dashboard = board.dashboard.link(link("Training run", "training-exporter-run"))
    board.row("GPU activity").add(
        graph("GPU utilisation", "Fraction of time a kernel ran. High utilisation says nothing about how "
              "much of the GPU the kernels use: see SM activity.", "percentunit",
              query(g("training_gpu_utilization_ratio"), gpu)),
        graph("SM and tensor core activity (GPM)", "Hopper and later: SMs busy, warp occupancy, tensor "
              "pipes active and DRAM bandwidth, averaged over one NVML poll.", "percentunit",
              query(g("training_gpu_sm_active_ratio"), "SM active " + gpu),
              query(g("training_gpu_sm_occupancy_ratio"), "SM occupancy " + gpu),
              query(g("training_gpu_tensor_active_ratio"), "tensor active " + gpu),
              query(g("training_gpu_dram_active_ratio"), "DRAM bandwidth " + gpu)),
        graph("GPU memory", "Device memory in use against the GPU's total (dashed).", "bytes",
              query(g("training_gpu_memory_used_bytes"), "used " + gpu),
              query(g("training_gpu_memory_total_bytes"), "total " + gpu), dashed=("total",), width=8),
        graph("Power", "Power draw against the enforced power limit (dashed).", "watt",
              query(g("training_gpu_power_draw_watts"), "draw " + gpu),
              query(g("training_gpu_power_limit_watts"), "limit " + gpu), dashed=("limit",), width=8),
        graph("Temperature", "GPU core and memory temperature.", "celsius",
              query(g("training_gpu_temperature_celsius"), "core " + gpu),
              query(g("training_gpu_memory_temperature_celsius"), "memory " + gpu), width=8),
    )
    board.row("GPU health").add(
        graph("Clock slowdown reasons", "Reasons holding the clocks down right now (1 while active); "
              "thermal and hardware slowdowns cost throughput.", "bool",
              query(f"{g('training_gpu_clock_event_reason_active')} > 0", gpu + " {{reason}}"), width=8),
        graph("Xid errors", "Xid errors by code since the exporter started (NVML's event API).", "none",
              query(g("training_gpu_xid_errors_total"), gpu + " Xid {{xid}}"), width=8),
        graph("ECC errors and row remapping", "Volatile ECC errors (since the driver loaded) and remapped "
              "memory rows (pending: waits for a GPU reset).", "none",
              query(g("training_gpu_ecc_errors_total", 'counter="volatile"'), "ECC {{error_type}} " + gpu),
              query(g("training_gpu_remapped_rows"), "remapped {{cause}} " + gpu),
              query(g("training_gpu_remapped_rows_pending"), "remap pending " + gpu), width=8),
        single("GPUs answering", "1 per GPU that answered the latest NVML poll.", "bool",
               query(g("training_gpu_up"), gpu), width=8),
        single("Since last NVML poll", "A growing age means a hung driver call.", "s",
               query(f"time() - {h('training_gpu_last_poll_timestamp_seconds')}", "{{instance}}"),
               width=8, red_above=30),
        graph("GPU memory per process", "Device memory of each compute process on the GPU.", "bytes",
              query(g("training_gpu_process_memory_used_bytes"), gpu + " pid {{pid}} {{process_name}}"),
              width=8, height=4),
    )
    board.row("Host and container").add(
        graph("Host CPU", "CPU time by mode over all CPUs, as a fraction of the host's CPUs.", "percentunit",
              query(f"sum by (job, instance, mode) ({rate(busy_cpu)})"
                    f"\n/ on (job, instance) group_left ()\n{h('training_host_cpus')}", "{{instance}} {{mode}}"),
              stacked=True, width=8),
        graph("Host memory", "Memory in use (total less available) against the host's memory (dashed).", "bytes",
              query(f"{h('training_host_memory_total_bytes')} - {h('training_host_memory_available_bytes')}",
                    "used {{instance}}"),
              query(h("training_host_memory_total_bytes"), "total {{instance}}"), dashed=("total",), width=8),
        graph("Container memory", "Memory charged to the exporter's cgroup against its limit (dashed; the "
              "host's memory where the cgroup has no limit). As a sidecar this is the sidecar's cgroup.", "bytes",
              query(h("training_container_memory_usage_bytes"), "usage {{instance}}"),
              query(f"{h('training_container_memory_limit_bytes')}\nor\n{h('training_host_memory_total_bytes')}",
                    "limit {{instance}}"), dashed=("limit",), width=8),
        graph("Disk I/O", "Bytes read and written per second, per whole disk.", "Bps",
              query(rate(h("training_host_disk_read_bytes_total")), "read {{instance}} {{device}}"),
              query(rate(h("training_host_disk_written_bytes_total")), "written {{instance}} {{device}}"), width=8),
        graph("Network", "Bytes received and sent per second, per interface.", "Bps",
              query(rate(h("training_host_network_receive_bytes_total")), "received {{instance}} {{device}}"),
              query(rate(h("training_host_network_transmit_bytes_total")), "sent {{instance}} {{device}}"),
              width=8),
        graph("Filesystem free", "Free space on the filesystems of the configured paths (checkpoints, logs).",
              "bytes", query(h("training_host_filesystem_free_bytes"), "{{instance}} {{path}}"), width=8),
    )
    board.row("Training process").add(
        single("Training process", "1 while the training process is found and running.", "bool",
               query(h("training_process_up"), "{{instance}}"), width=6),
        graph("Process CPU", "CPU time of the training process per second (cores in use).", "short",
              query(f"sum by (job, instance, mode) ({rate(h('training_process_cpu_seconds_total'))})",
                    "{{instance}} {{mode}}"), stacked=True, width=6),
        graph("Process memory", "Resident memory of the training process and of its children (data loader "
              "workers, ranks under a launcher; shared pages counted again).", "bytes",
              query(h("training_process_resident_memory_bytes"), "process {{instance}}"),
              query(h("training_process_children_resident_memory_bytes"), "children {{instance}}"), width=6),
        graph("Threads, children, file descriptors", "Threads and open file descriptors of the training "
              "process, and its live descendants.", "short",
              query(h("training_process_threads"), "threads {{instance}}"),
              query(h("training_process_children"), "children {{instance}}"),
              query(h("training_process_open_fds"), "open fds {{instance}}"), width=6),
    )
    return board.build()


def ranks() -> dict:
    def m(metric: str) -> str:
        return f"{metric}{{{TRAINING}}}"

    def h(metric: str) -> str:
        return f"{metric}{{{RUN}}}"

    rank = "{{instance}} {{source}}"
    idle_cpu = f'training_host_cpu_seconds_total{{{RUN}, mode="idle"}}'
    board = Board("training-exporter-ranks", "Training ranks",
                  "One run spread over many pods or nodes, one exporter each: the ranks side by side, so a "
                  "straggler stands out. Pick one job (run).",
                  [datasource_variable(), job_variable(), instance_variable(), source_variable()])
    board.dashboard = board.dashboard.link(link("Training run", "training-exporter-run"))
    board.row("Progress by rank").add(
        graph("Steps behind the leader", "How far each rank's step is behind the run's most advanced rank.",
              "none", query(f"max by (job) ({m('training_step')})\n- on (job) group_right ()\n{m('training_step')}",
                            rank)),
        graph("Step rate relative to the run's median", "Each rank's step rate over the median of the run's "
              "ranks. Where ranks progress independently a slow one sits below 1; in lockstep (synchronous) "
              "training all sit at 1 and a slow node shows in SM activity and power below.", "percentunit",
              query(f"{m('training_steps_per_second')}\n/ on (job) group_left ()\n"
                    f"quantile by (job) (0.5, {m('training_steps_per_second')})", rank)),
        graph("Steps per second", "Step rate of each rank.", "none", query(m("training_steps_per_second"), rank)),
        ranking("Current step rate", "Latest step rate per rank, slowest first to spot.", "none",
                query(m("training_steps_per_second"), rank, instant=True)),
    )
    board.row("GPUs by rank").add(
        graph("GPU utilisation by rank", "Mean utilisation of each rank's GPUs. A kernel waiting in a "
              "collective counts as running, so this stays high on ranks that wait: compare SM activity and "
              "power.", "percentunit",
              query(f"avg by (job, instance) ({h('training_gpu_utilization_ratio')})", "{{instance}}"), width=8),
        graph("SM activity by rank (GPM)", "Mean SM activity of each rank's GPUs (Hopper and later). In "
              "synchronous training the other ranks wait for a straggler with few SMs busy: the straggler is "
              "the rank whose SM activity stays high.",
              "percentunit", query(f"avg by (job, instance) ({h('training_gpu_sm_active_ratio')})", "{{instance}}"),
              width=8),
        graph("GPU power by rank", "Power drawn by each rank's GPUs together; ranks waiting in "
              "collectives draw less than the one they wait for.", "watt",
              query(f"sum by (job, instance) ({h('training_gpu_power_draw_watts')})", "{{instance}}"), width=8),
    )
    board.row("Health by rank").add(
        graph("Loss by rank", "Training loss each rank logs.", "none", query(m("training_loss"), rank), width=8),
        graph("Time since last step by rank", "A rank whose time keeps growing has stopped.", "s",
              query(f"time() - {m('training_last_progress_timestamp_seconds')}", rank),
              width=8, threshold=STALL_SECONDS),
        graph("Host CPU busy by rank", "Fraction of each rank's host CPUs not idle: a saturated CPU starves "
              "the GPUs of input.", "percentunit",
              query(f"1 - sum by (job, instance) "
                    f"(rate({idle_cpu}[$__rate_interval]))"
                    f"\n/ on (job, instance)\n{h('training_host_cpus')}", "{{instance}}"), width=8),
    )
    return board.build()


DASHBOARDS = {"training-run.json": training_run, "training-hardware.json": hardware, "training-ranks.json": ranks}


# ---- output --------------------------------------------------------------------------------

def render() -> dict[str, dict]:
    return {name: make() for name, make in DASHBOARDS.items()}


def dashboard_text(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def configmap_text(dashboards: dict[str, dict]) -> str:
    """The dashboards as one ConfigMap for Grafana's sidecar, which loads ConfigMaps labelled
    ``grafana_dashboard: "1"``. Compact JSON: kubectl apply keeps a copy in an annotation limited to 256 KiB."""
    resource = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "training-exporter-dashboards",
                     "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "training-exporter",
                                "app.kubernetes.io/component": "dashboards"},
                     # kube-prometheus-stack's sidecar puts the dashboards in this folder when its
                     # folderAnnotation is set to grafana_folder.
                     "annotations": {"grafana_folder": "Training"}},
        "data": {name: json.dumps(dashboard, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
                 for name, dashboard in dashboards.items()},
    }
    return ("# Generated by grafana/dashboards.py from the dashboards' code: edit that, then run it.\n"
            + yaml.safe_dump(resource, sort_keys=False, width=1 << 20, allow_unicode=True))


def outputs() -> dict[str, str]:
    dashboards = render()
    files = {os.path.join(OUT_DIR, name): dashboard_text(dashboard) for name, dashboard in dashboards.items()}
    files[CONFIGMAP_FILE] = configmap_text(dashboards)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        if current != text:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}: run python grafana/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
