"""The article's client: one call, printed.

    python client.py [TARGET]    # default 127.0.0.1:50051
"""

import sys

import grpc

import example_pb2
import example_pb2_grpc


def run(target):
    with grpc.insecure_channel(target) as channel:
        stub = example_pb2_grpc.MyServiceStub(channel)
        response = stub.SayHello(example_pb2.HelloRequest(name="World"))
        print(response.message)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
