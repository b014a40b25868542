"""The Grafana dashboards: the committed JSON is what the code makes, it follows Grafana's
dashboard linter, and every panel's query returns data from a real Prometheus scraping real
exporters.

The end-to-end test runs one training run over two ranks: two exporter processes (two pods),
each following the Hugging Face console log of its own simulated trainer process and a fake
NVML with two H100s. Rank 1 is slower (a straggler); rank 0 logs a NaN grad norm and a loss
spike, rank 1 an out-of-memory error and an fp16 overflow, and GPU 0 of rank 0 an Xid, so the
panels for those events have something to show. Prometheus scrapes both every second and
evaluates the project's alert rules, so the firing-alerts panel has alerts.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from pathlib import Path

import requests
import yaml
from conftest import FAKE_NVML_DIR, ROOT, ExporterProcess, load_script, wait_for
from stack import prometheus_server  # noqa: F401  fixture

GIB = 1024**3
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES = ROOT / "alert_rules" / "training-exporter.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Stable: links between the dashboards and users' bookmarks use them.
UIDS = {"training-run.json": "training-exporter-run", "training-hardware.json": "training-exporter-hardware",
        "training-ranks.json": "training-exporter-ranks"}
# What Grafana puts for $__rate_interval with a 1 s scrape interval: max($__interval + 1s, 4 * 1s).
RATE_INTERVAL = "4s"


def load_generator():
    return load_script(ROOT / "grafana" / "dashboards.py", "grafana_dashboards")


def committed() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel with queries (rows left out, and panels inside collapsed rows included)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def targets(dashboards: dict[str, dict]):
    for name, dashboard in dashboards.items():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                yield name, panel, target


# ---- the committed files are the code's -------------------------------------------------------

def test_committed_dashboards_and_configmap_are_what_the_code_makes():
    generator = load_generator()
    stale = [os.path.relpath(path, ROOT) for path, text in generator.outputs().items()
             if not os.path.exists(path) or Path(path).read_text(encoding="utf-8") != text]
    assert not stale, f"stale: {stale}: run python grafana/dashboards.py"
    assert sorted(committed()) == sorted(UIDS)


def test_configmap_carries_every_committed_dashboard():
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "grafana-dashboards.yaml").read_text())
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar selects on
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == committed()


# ---- lint, as Grafana's dashboard linter asks -----------------------------------------------------

def test_uids_are_fixed_and_unique():
    assert {name: dashboard["uid"] for name, dashboard in committed().items()} == UIDS


def test_variables_are_in_the_linters_form():
    for name, dashboard in committed().items():
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        source = variables.pop("datasource")
        assert (source["type"], source["query"], source["label"]) == ("datasource", "prometheus", "Data source")
        expected = {"job", "instance"} | ({"gpu"} if "hardware" in name else {"source"})
        assert set(variables) == expected, name
        for variable in variables.values():
            where = f"{name}: ${variable['name']}"
            assert variable["type"] == "query", where
            assert variable["datasource"] == DATASOURCE, where
            assert re.fullmatch(r"label_values\((.+), " + variable["name"] + r"\)", variable["query"]), where
            assert variable["label"] == variable["name"].capitalize(), where
            assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".+", where
            assert variable["refresh"] == 2, where  # on time range change


def test_every_panel_uses_the_datasource_variable_and_says_what_it_shows():
    for name, dashboard in committed().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(dashboard):
            where = f"{name}: {panel['title']!r}"
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), where
            assert panel["title"] and panel["description"], where
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where


RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\(")
RANGE = re.compile(r"\[([^\]]*)\]")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
METRIC = re.compile(r"\b(training_[a-z0-9_]+|ALERTS)\b(?!\{)")


def test_every_range_is_the_rate_interval_and_every_selector_names_job_and_instance():
    rated = 0
    for name, panel, target in targets(committed()):
        expr, where = target["expr"], f"{name}: {panel['title']!r}: {target['expr']}"
        assert RANGE.findall(expr) == ["$__rate_interval"] * len(RANGE.findall(expr)), where
        assert len(RANGE_FUNCTION.findall(expr)) == len(RANGE.findall(expr)), where
        rated += len(RANGE.findall(expr))
        assert not METRIC.findall(expr), f"{where}: a metric without matchers"
        selectors = SELECTOR.findall(expr)
        assert selectors, where
        for metric, matchers in selectors:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, f"{where}: {metric}"
    assert rated >= 5  # the check above had rates to look at


def test_the_linter_checks_catch_what_they_should():
    # The same patterns on known-bad expressions, so the checks above cannot pass by matching nothing.
    assert RANGE.findall("rate(x{job=~\"$job\"}[5m])") == ["5m"]
    assert METRIC.findall("training_loss + training_step{job=\"a\"}") == ["training_loss"]
    assert SELECTOR.findall('training_loss{job="a"}') == [("training_loss", 'job="a"')]


def test_provisioning_points_grafana_at_the_dashboards():
    datasources = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    [datasource] = datasources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    providers = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "training-exporter.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["services"]["grafana"]["volumes"]}
    assert (ROOT / "deploy" / "compose" / mounts[provider["options"]["path"]]).resolve() == DASHBOARD_DIR


# ---- every query returns data ----------------------------------------------------------------------

def simulated_rank(path: str, speed: float, rank: int, trouble, stop) -> None:
    """A Hugging Face Trainer console log, as a trainer process of its own writes it (transformers 5
    style: quoted numbers; tqdm bars glued in front with \\r), an epoch every 40 steps so that the
    training-loss plateau judges a few. ``trouble`` (an Event) makes rank 0 log a NaN grad norm
    and rank 1 an out-of-memory error and an fp16 overflow; the guard (in dry run) decides on the NaN."""
    total = 5000
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        log.write(f"***** Running training *****\n  Num examples = 80,000\n  Total optimization steps = {total}\n")
        step, losses, troubled = 0, 0, False
        while not stop.wait(1 / speed):
            step += 1
            bar = f"\r{100 * step // total:3d}%|          | {step}/{total} [00:{step // 60:02d}<10:00, {speed:.2f}it/s]"
            log.write(bar)
            if step % 2 == 0:
                losses += 1
                loss = 2.2 * math.exp(-step / 400) + 1.1 + 0.01 * (step % 7)
                if losses == 14 and rank == 0:
                    loss *= 3  # a spike, once the spike window has its 10 losses
                grad_norm = "nan" if troubled and rank == 0 else f"{0.9 + 0.01 * (step % 5):.4f}"
                log.write(f"\r{' ' * len(bar)}\r{{'loss': '{loss:.4f}', 'grad_norm': '{grad_norm}', "
                          f"'learning_rate': '{5e-5 * (1 - step / total):.4e}', 'epoch': '{step / 40:.4f}', "
                          f"'num_input_tokens_seen': '{step * 4096}'}}\n{bar}")
            if step % 10 == 0:
                log.write(f"\n{{'eval_loss': '{1.5 + 2.0 * math.exp(-step / 100):.4f}', 'eval_runtime': '0.51', "
                          f"'eval_samples_per_second': '980.2', 'epoch': '{step / 40:.4f}'}}\n")
            if trouble.is_set() and not troubled:
                troubled = True
                if rank == 1:
                    log.write("\nGradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0\n")
                    log.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                              "total capacity of 79.10 GiB of which 1.06 GiB is free.\n")


def h100(rank: int, index: int, busy: int, pid: int) -> dict:
    return {
        "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{rank:04x}{index:04x}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "utilization": {"gpu": busy, "memory": 45},
        "memory": {"total": 80 * GIB, "used": 60 * GIB, "free": 19 * GIB, "reserved": GIB},
        "power_mw": 650_000, "power_limit_mw": 700_000, "energy_mj": 10**9, "temperature": 60,
        "clocks_mhz": {"sm": 1980, "mem": 2619}, "clock_event_reasons": 0x4,  # held at the power cap
        "pcie": {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16},
        "fields": {"82": 70, "3": 0, "4": 0, "5": 0, "6": 0, "142": 0, "143": 0, "144": 0, "145": 0},
        "processes": [{"pid": pid, "used_memory": 60 * GIB}],
        "gpm": {"supported": True, "metrics": {"2": busy * 0.8, "3": 40.0, "5": busy * 0.6, "10": 50.0}},
    }


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a Prometheus query: each value regex-escaped
    (the backslash doubled for the PromQL string), several joined as (a|b)."""
    escaped = [re.sub(r"[\\$^*{}\[\]'+?.()|]", lambda match: "\\\\" + match.group(0), value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "1s").replace("$__range", "1m")
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, expr
    return expr


def resolve_variables(prometheus, dashboard: dict) -> dict[str, str]:
    """Each query variable's values, asked of Prometheus as Grafana asks (label values of the
    series its selector matches), every value selected."""
    resolved: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
        response = requests.get(f"{prometheus.url}/api/v1/label/{label}/values",
                                params={"match[]": substitute(selector, resolved)}, timeout=5).json()
        assert response["status"] == "success", response
        assert response["data"], f"${variable['name']}: no values for {variable['query']}"
        resolved[variable["name"]] = grafana_regex(response["data"])
    return resolved


def documented_queries() -> list[str]:
    """The PromQL examples of docs/deployment.md: each blank-line-separated query of its promql
    blocks (comments dropped), and the expr of its example alert."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    queries = []
    for block in re.findall(r"```promql\n(.*?)```", text, re.DOTALL):
        for chunk in block.split("\n\n"):
            query = "\n".join(line for line in chunk.splitlines() if not line.startswith("#")).strip()
            if query:
                queries.append(query)
    for block in re.findall(r"```yaml\n(- alert:.*?)```", text, re.DOTALL):
        queries.extend(rule["expr"] for rule in yaml.safe_load(block))
    return queries


def data_of(prometheus, expr: str) -> list[dict]:
    return prometheus.query(expr)  # raises StackError with Prometheus's message if it does not parse


def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path, prometheus_server):  # noqa: F811
    started = time.monotonic()
    fork = multiprocessing.get_context("fork")  # the simulated trainers: processes of their own
    trouble, stop = fork.Event(), fork.Event()
    exporters, trainers = [], []
    try:
        for rank, speed, busy in ((0, 8.0, 90), (1, 4.0, 45)):
            directory = tmp_path / f"rank{rank}"
            directory.mkdir()
            log = directory / "train.log"
            trainer = fork.Process(target=simulated_rank, args=(str(log), speed, rank, trouble, stop), daemon=True)
            trainer.start()
            trainers.append(trainer)
            (directory / "train.pid").write_text(f"{trainer.pid}\n")
            gpus = [h100(rank, 0, busy, trainer.pid), h100(rank, 1, busy, trainer.pid)]
            if rank == 0:
                gpus[0]["xid_events"] = [79]  # fallen off the bus
            scenario = directory / "nvml.json"
            scenario.write_text(json.dumps({"driver_version": "550.54.15", "cuda_version": 12040, "gpus": gpus}))
            env = {"FAKE_NVML_SCENARIO": str(scenario),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), os.environ.get("PYTHONPATH")]))}
            exporters.append(ExporterProcess(
                ["--log", str(log), "--process.pid-file", str(directory / "train.pid"),
                 "--host.filesystem-path", str(directory), "--guard.on-nonfinite", "grad_norm", "--guard.dry-run"],
                env=env))
        for exporter in exporters:
            exporter.wait_ready()
        prometheus = prometheus_server([f"127.0.0.1:{exporter.port}" for exporter in exporters],
                                       job="training-exporter", rule_files=[RULES])
        prometheus.wait_for_target_up(timeout=20)
        # The OOM alert counts a rise, so Prometheus must see the counter at 0 before the error.
        deadline = time.monotonic() + 10
        while len(data_of(prometheus, "training_oom_events_total")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        trouble.set()

        dashboards = committed()
        missing: list[str] = []
        deadline = time.monotonic() + 40
        while True:
            missing = []
            for name, dashboard in dashboards.items():
                variables = resolve_variables(prometheus, dashboard)
                for panel in panels(dashboard):
                    for target in panel["targets"]:
                        if not data_of(prometheus, substitute(target["expr"], variables)):
                            missing.append(f"{name}: {panel['title']!r}: {target['expr']}")
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not missing, "queries without data:\n" + "\n".join(missing)

        # What the multi-rank panels are for: the straggler stands out.
        variables = resolve_variables(prometheus, dashboards["training-ranks.json"])
        by_title = {panel["title"]: panel for panel in panels(dashboards["training-ranks.json"])}
        ports = [str(exporter.port) for exporter in exporters]

        def per_rank(title: str) -> dict[str, float]:
            result = data_of(prometheus, substitute(by_title[title]["targets"][0]["expr"], variables))
            return {ports.index(series["metric"]["instance"].rpartition(":")[2]): float(series["value"][1])
                    for series in result}

        # (Waited for: a panel has data as soon as one rank has, the comparison needs both.)
        def straggler_shows() -> bool:
            relative, behind = per_rank("Step rate relative to the run's median"), per_rank("Steps behind the leader")
            return relative[1] < 1 < relative[0] and behind[0] == 0 and behind[1] > 0

        wait_for(straggler_shows, 20, "rank 1 (half speed) should be under the median step rate and behind rank 0")
        assert per_rank("GPU utilisation by rank") == {0: 0.9, 1: 0.45}

        # The multi-node queries docs/deployment.md gives parse; those this run meets have data
        # (rank 1 runs at half speed; there is a NaN), the others (a busy straggler's SMs, a stall)
        # parse and find nothing.
        documented = documented_queries()
        assert len(documented) >= 5
        for expr in documented:
            result = data_of(prometheus, expr)
            assert bool(result) == ("sm_active" not in expr and "1800" not in expr), (expr, result)

        # The alerts panel shows the alerts of the project's rules that the log set off.
        run = dashboards["training-run.json"]
        [alerts_panel] = [panel for panel in panels(run) if panel["type"] == "table"]
        alerts = substitute(alerts_panel["targets"][0]["expr"], resolve_variables(prometheus, run))
        wait_for(lambda: {"TrainingNonFiniteValue", "TrainingOutOfMemory"}
                 <= {alert["metric"]["alertname"] for alert in data_of(prometheus, alerts)}, 20,
                 f"the NaN and OOM alerts should fire: {data_of(prometheus, alerts)}")
    finally:
        stop.set()
        for trainer in trainers:
            trainer.join(timeout=5)
        for exporter in exporters:
            exporter.stop()
    elapsed = time.monotonic() - started
    print(f"\nwhole test: {elapsed:.1f}s")
    assert elapsed < 90
