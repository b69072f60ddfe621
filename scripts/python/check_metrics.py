"""Reads /metrics with the official Prometheus client's strict OpenMetrics parser and
prints one JSON line: {"families": N, "samples": N, "endpoints": [...]}, the endpoints
being those that METRIC has series for (by grpc_lb_endpoint, or server_address).

    python check_metrics.py URL METRIC EXPECTED    # EXPECTED: a,b,c, the endpoints wanted

Exits 1 if the text is not valid OpenMetrics (with the parser's complaint), or if the
endpoints are not exactly EXPECTED.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main(url, per_endpoint, expected):
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
    if endpoints != sorted(expected.split(",")):
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
