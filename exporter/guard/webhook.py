"""Alertmanager's webhook payload, read for the guard: the firing alerts that are about this run.

Alertmanager posts a JSON object whose ``alerts`` each carry a ``status`` (firing or resolved),
``labels`` and ``startsAt`` (RFC 3339). An alert is about this run when its labels carry every
label of ``guard.webhook.match`` with the same value (``job`` names the run in the project's
deployments). Anything else in the payload is ignored; a payload that is not of this shape is a
``PayloadError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class PayloadError(ValueError):
    """Not an Alertmanager webhook payload; the message says what is wrong."""


@dataclass(frozen=True)
class Alert:
    name: str
    labels: dict[str, str]
    starts_at: float  # Unix time


def firing_alerts(payload) -> list[Alert]:
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise PayloadError("expected Alertmanager's webhook payload: an object with a list of alerts")
    firing = []
    for i, alert in enumerate(payload["alerts"]):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{i}]: expected an object")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise PayloadError(f"alerts[{i}].labels: expected an object of strings")
        if alert.get("status") != "firing":
            continue
        try:
            starts = datetime.fromisoformat(alert["startsAt"])
        except (KeyError, TypeError, ValueError):
            starts = None
        if starts is None or starts.tzinfo is None:
            raise PayloadError(f"alerts[{i}].startsAt: expected an RFC 3339 time")
        firing.append(Alert(labels.get("alertname", ""), labels, starts.timestamp()))
    return firing


def about_run(alerts: list[Alert], match: dict[str, str]) -> list[Alert]:
    """The alerts whose labels carry every label of ``match``, with its value."""
    return [alert for alert in alerts if all(alert.labels.get(name) == value for name, value in match.items())]
