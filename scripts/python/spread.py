"""grpcio's own client-side balancing against our servers: N calls over a target,
counted by the x-served-by each server stamps on its answer.

    python spread.py TARGET N [POLICY]    # e.g. ipv4:127.0.0.1:50051,127.0.0.1:50052 30 round_robin
    python spread.py TARGET N POLICY --tls certs    # over mutual TLS (see tls.py)

Prints one JSON object: {"127.0.0.1:50051": 15, ...}; exits 1 if a call fails or a
reply is not "Hello, interop!".
"""

import json
import sys

import example_pb2
import example_pb2_grpc
import tls


def main(target, n, policy, tls_dir=None):
    options = [("grpc.lb_policy_name", policy)]
    # A multi-address target makes grpcio send the whole list as :authority, which the
    # Rust h2 server rejects as invalid (RST_STREAM PROTOCOL_ERROR): name one host.
    if "," in target:
        options.append(("grpc.default_authority", "localhost"))
    counts = {}
    with tls.channel(target, options, tls_dir) as channel:
        stub = example_pb2_grpc.MyServiceStub(channel)
        for _ in range(n):
            reply, call = stub.SayHello.with_call(example_pb2.HelloRequest(name="interop"))
            if reply.message != "Hello, interop!":
                print(f"unexpected reply: {reply.message!r}", file=sys.stderr)
                sys.exit(1)
            served_by = dict(call.initial_metadata()).get("x-served-by", "?")
            counts[served_by] = counts.get(served_by, 0) + 1
    print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
    tls_dir = tls.take_flag(sys.argv)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "round_robin", tls_dir)
