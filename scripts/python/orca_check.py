"""Reads a server's out-of-band ORCA load reports (gRFC A51) with grpcio and the
protobuf runtime, from the xDS protos in proto/xds compiled by grpcio-tools
(gen_stubs.py): the stream xds.service.orca.v3.OpenRcaService/StreamCoreMetrics. For
scripts/interop.sh.

grpcio's core consumes the endpoint-load-metrics-bin trailer itself and never hands it
to the application, so the per-call reports are read by grpc-js instead
(scripts/node/orca_check.js).

    python orca_check.py HOST:PORT

Prints one JSON line: the first out-of-band report.
"""

import json
import sys

import grpc
from google.protobuf import json_format

from xds.service.orca.v3 import orca_pb2, orca_pb2_grpc


def as_dict(report):
    return json_format.MessageToDict(report, preserving_proto_field_name=True)


def main(target):
    with grpc.insecure_channel(target) as channel:
        # Out of band: ask for a report every second; take the first.
        oob = orca_pb2_grpc.OpenRcaServiceStub(channel)
        request = orca_pb2.OrcaLoadReportRequest()
        request.report_interval.seconds = 1
        stream = oob.StreamCoreMetrics(request, timeout=10)
        first = next(iter(stream))
        stream.cancel()
        print(json.dumps({"oob": as_dict(first)}))


if __name__ == "__main__":
    main(sys.argv[1])
