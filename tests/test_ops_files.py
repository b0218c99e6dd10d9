"""The dashboard and the alert rules in ops/ parse and use only metric names the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from omnirec.service.metrics import RESTARTS, ServiceMetrics

OPS = Path(__file__).resolve().parents[1] / "ops"
OWN_METRIC = re.compile(r"\b((?:grpc_server|omnirec)_[a-z0-9_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    ServiceMetrics.create(registry)
    names = {f"{RESTARTS}_total"}
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_exported_names_cover_the_standard_grpc_server_metrics() -> None:
    assert {"grpc_server_started_total", "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket"} <= exported_names()


def test_alert_rules_parse_and_reference_only_exported_metrics() -> None:
    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"OmnirecErrorRatioHigh", "OmnirecLatencyP99High", "OmnirecDegradedShareHigh", "OmnirecModelStale",
            "OmnirecFeaturesStale", "OmnirecOfferBudgetAlmostSpent"} <= {a["alert"] for a in alerts}
    exported = exported_names()
    for alert in alerts:
        assert alert["labels"]["severity"] and alert["annotations"]["summary"], alert["alert"]
        used = set(OWN_METRIC.findall(alert["expr"]))
        assert used, f"{alert['alert']} uses no omnirec metric"
        assert used <= exported, f"{alert['alert']}: {sorted(used - exported)} not exported"


def test_dashboard_parses_and_references_only_exported_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "omnirec.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used = {name for e in exprs for name in OWN_METRIC.findall(e)}
    assert used <= exported_names(), sorted(used - exported_names())
    assert {"omnirec_degraded_answers_total", "omnirec_model_bundle_created_timestamp_seconds",
            "omnirec_offer_budget_spent", "omnirec_worker_restarts_total"} <= used
