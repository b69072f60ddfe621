"""Reads /metrics with the official Prometheus client's strict OpenMetrics parser and
prints one JSON line: {"families": N, "samples": N, "endpoints": [...]}.

    python check_metrics.py http://127.0.0.1:9090/metrics [METRIC_WITH_ENDPOINTS]

Exits 1 (with the parser's complaint) if the text is not valid OpenMetrics.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main(url, per_endpoint):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as err:
        print(f"not valid OpenMetrics: {err}", file=sys.stderr)
        sys.exit(1)
    samples = [s for f in families for s in f.samples]
    endpoints = sorted(
        {
            s.labels.get("grpc_lb_endpoint") or s.labels.get("server_address")
            for s in samples
            if s.name == per_endpoint
        }
        - {None}
    )
    print(json.dumps({"families": len(families), "samples": len(samples), "endpoints": endpoints}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "grpc_client_attempt_started_total")
