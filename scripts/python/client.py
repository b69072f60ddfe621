"""The article's client: one call, printed.

    python client.py [TARGET]    # default 127.0.0.1:50051
    python client.py TARGET --tls certs    # mutual TLS (our addition; see tls.py)
"""

import sys

import example_pb2
import example_pb2_grpc
import tls


def run(target, tls_dir=None):
    with tls.channel(target, None, tls_dir) as channel:
        stub = example_pb2_grpc.MyServiceStub(channel)
        response = stub.SayHello(example_pb2.HelloRequest(name="World"))
        print(response.message)


if __name__ == "__main__":
    tls_dir = tls.take_flag(sys.argv)
    run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051", tls_dir)
