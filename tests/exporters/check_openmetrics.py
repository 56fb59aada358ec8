"""Parses an OpenMetrics exposition (stdin) with prometheus_client's strict parser.

Exits non-zero if the parser rejects it or if a laneguard family is missing or empty.
"""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

EXPECTED = {
    "laneguard_calls": "counter",
    "laneguard_rejections": "counter",
    "laneguard_timeouts": "counter",
    "laneguard_call_duration_seconds": "histogram",
    "laneguard_queue_wait_seconds": "histogram",
    "laneguard_admission_wait_seconds": "histogram",
    "laneguard_lane_queued_requests": "gauge",
    "laneguard_lane_queue_limit": "gauge",
    "laneguard_lane_borrowed_calls": "gauge",
    "laneguard_lane_active_calls": "gauge",
    "laneguard_global_active_calls": "gauge",
    "laneguard_lane_concurrency_limit": "gauge",
    "laneguard_global_concurrency_limit": "gauge",
    "laneguard_lane_overrunning_calls": "gauge",
    "laneguard_rss_bytes": "gauge",
    "laneguard_heap_used_bytes": "gauge",
    "laneguard_rss_limit_bytes": "gauge",
    "laneguard_heap_warning_threshold_bytes": "gauge",
    "laneguard_spans_exported": "counter",
    "laneguard_spans_dropped": "counter",
    "laneguard_log_lines": "counter",
}

text = sys.stdin.read()
families = {f.name: f for f in text_string_to_metric_families(text)}
problems = []
for name, kind in EXPECTED.items():
    family = families.get(name)
    if family is None:
        problems.append(f"missing family {name}")
    elif family.type != kind:
        problems.append(f"{name}: type {family.type}, expected {kind}")
    elif not family.samples:
        problems.append(f"{name}: no samples")
extra = sorted(set(families) - set(EXPECTED))
if extra:
    problems.append(f"unexpected families {extra}")
successes = [s.value for s in families["laneguard_calls"].samples
             if s.labels == {"lane": "tool_call", "outcome": "success"}]
if successes != [3.0]:
    problems.append(f"laneguard_calls_total tool_call success = {successes}, expected [3.0]")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"OpenMetrics parser accepted {len(families)} families")
