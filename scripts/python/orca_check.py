"""Reads a server's ORCA load reports (gRFC A51) with grpcio and the protobuf runtime,
from the xDS protos in proto/xds compiled by grpcio-tools (gen_stubs.py): the
out-of-band stream xds.service.orca.v3.OpenRcaService/StreamCoreMetrics, and the
endpoint-load-metrics-bin trailer of SayHello answers. For scripts/interop.sh.

    python orca_check.py HOST:PORT

Prints one JSON line: the first out-of-band report and the last per-call one.
"""

import json
import sys

import grpc
from google.protobuf import json_format

import example_pb2
import example_pb2_grpc
from xds.data.orca.v3 import orca_load_report_pb2
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

        # Per call: the trailer of each answer.
        stub = example_pb2_grpc.MyServiceStub(channel)
        last = None
        for _ in range(50):
            _, call = stub.SayHello.with_call(example_pb2.HelloRequest(name="orca"), timeout=10)
            for key, value in call.trailing_metadata():
                if key == "endpoint-load-metrics-bin":
                    last = orca_load_report_pb2.OrcaLoadReport.FromString(value)
        print(
            json.dumps(
                {
                    "oob": as_dict(first),
                    "trailer": as_dict(last) if last is not None else None,
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1])
