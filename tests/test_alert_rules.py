"""The alert rules: valid for the real promtool, unit-tested for every alert (firing and near
miss), rendered from one source into the rule file and the PrometheusRule, with a runbook each."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, load_script

RULES = ROOT / "alert_rules" / "training-exporter.rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
TESTS = sorted(glob.glob(str(ROOT / "alert_rules" / "tests" / "*.test.yml")))
SEVERITIES = {"critical", "warning", "info"}


def load_build():
    return load_script(ROOT / "alert_rules" / "build.py", "alert_rules_build")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (CI's .ci/run installs it)"
    return path


def alerts(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    assert len(TESTS) >= 3
    result = subprocess.run([promtool(), "test", "rules", *TESTS], capture_output=True, text=True,
                            cwd=ROOT / "alert_rules" / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_in_a_near_miss():
    rule_alerts = {rule["alert"] for rule in alerts(yaml.safe_load(RULES.read_text())["groups"])}
    fired, near_missed = set(), set()
    for path in TESTS:
        for case in yaml.safe_load(open(path))["tests"]:
            assert case.get("interval"), f"{path}: set interval explicitly (older promtool needs it)"
            series = [s["series"] for s in case["input_series"]]
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                name = check["alertname"]
                if expected:
                    fired.add(name)
                    for alert in expected:
                        assert alert["exp_labels"]["severity"] in SEVERITIES
                        assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                # A near miss: an empty expectation, or an input series that fires nothing.
                firing = [a["exp_labels"] for a in expected]
                quiet = [s for s in series if not any(all(f'{k}="{v}"' in s for k, v in labels.items()
                                                          if k != "severity") for labels in firing)]
                if not expected or quiet:
                    near_missed.add(name)
    assert rule_alerts - fired == set(), "alerts never tested firing"
    assert rule_alerts - near_missed == set(), "alerts never tested in a near miss"


def test_every_alert_is_documented_and_annotated():
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    headings = {m.group(1).lower() for m in re.finditer(r"^### (\w+)$", runbooks, re.MULTILINE)}
    for rule in alerts(yaml.safe_load(RULES.read_text())["groups"]):
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and "{{" not in annotations["summary"], rule["alert"]
        assert "{{" in annotations["description"], f"{rule['alert']}: description should name the run/GPU/value"
        assert annotations["runbook_url"].endswith("#" + rule["alert"].lower())
        assert rule["alert"].lower() in headings, f"{rule['alert']} has no section in docs/runbooks.md"


def test_committed_files_match_their_source():
    build = load_build()
    for path, text in build.outputs(build.load_thresholds()).items():
        assert open(path).read() == text, f"{path} is stale: run python alert_rules/build.py"


def test_prometheus_rule_carries_the_same_groups():
    rules = yaml.safe_load(RULES.read_text())
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == rules["groups"]


def test_thresholds_change_in_one_place(tmp_path):
    build = load_build()
    thresholds = build.load_thresholds()
    thresholds["gpu_idle_ratio"] = 0.35
    thresholds["stall_seconds"] = 7200
    text = build.render_rules_file(thresholds)
    assert "avg_over_time(training_gpu_utilization_ratio[10m]) < 0.35" in text
    assert "training_last_progress_timestamp_seconds > 7200" in text
    out = tmp_path / "rules.yml"
    out.write_text(text)
    result = subprocess.run([promtool(), "check", "rules", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_threshold_is_named():
    build = load_build()
    thresholds = build.load_thresholds()
    del thresholds["stall_seconds"]
    with pytest.raises(KeyError, match="stall_seconds"):
        build.render_rules_file(thresholds)
