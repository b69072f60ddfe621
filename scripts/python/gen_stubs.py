"""Generates example_pb2.py and example_pb2_grpc.py from proto/example.proto, and the
ORCA load report and service (proto/xds/...), into OUT_DIR, with grpcio-tools (which
brings its own protoc and google/protobuf/*.proto).

    python gen_stubs.py OUT_DIR
"""

import os
import sys

import grpc_tools
from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.path.join(here, "..", "..", "proto")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
code = protoc.main(
    [
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "example.proto",
        "xds/data/orca/v3/orca_load_report.proto",
        "xds/service/orca/v3/orca.proto",
    ]
)
sys.exit(code)
