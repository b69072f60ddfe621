"""Generates example_pb2.py and example_pb2_grpc.py from proto/example.proto into
OUT_DIR (default: this directory's parent's .run/python), with grpcio-tools.

    python gen_stubs.py OUT_DIR
"""

import os
import sys

from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.path.join(here, "..", "..", "proto")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
code = protoc.main(
    ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "example.proto"]
)
sys.exit(code)
