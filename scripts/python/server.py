"""The article's server, as it wrote it: grpcio with a pool of 10 threads.

    python server.py [PORT]    # default 50051, on 127.0.0.1
    python server.py PORT --tls certs    # mutual TLS (our addition; see tls.py)

Stubs come from proto/example.proto (see gen_stubs.py). Used by scripts/bench.sh as the
anchor greeter-server is measured against, and by the interop tests.
"""

import sys
from concurrent import futures

import grpc

import example_pb2
import example_pb2_grpc
import tls


class MyService(example_pb2_grpc.MyServiceServicer):
    def SayHello(self, request, context):
        return example_pb2.HelloResponse(message=f"Hello, {request.name}!")


def serve(port, tls_dir=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    example_pb2_grpc.add_MyServiceServicer_to_server(MyService(), server)
    tls.add_port(server, f"127.0.0.1:{port}", tls_dir)
    server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    tls_dir = tls.take_flag(sys.argv)
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 50051, tls_dir)
