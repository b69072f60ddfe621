"""A closed-loop load from the Python grpcio stack, for scripts/bench.sh.

    python bench_client.py TARGET CONCURRENCY DURATION_S WARMUP_S [round_robin]

TARGET is a gRPC target; for balancing over several servers, grpcio's own syntax
`ipv4:127.0.0.1:50051,127.0.0.1:50052` with the policy round_robin. CONCURRENCY
coroutines on grpc.aio (the fastest Python client) each send the next call as soon as
the last returns. Prints one JSON line: calls, seconds, and latency percentiles in
microseconds.
"""

import asyncio
import json
import sys
import time

import grpc

import example_pb2
import example_pb2_grpc


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


async def main(target, concurrency, duration, warmup, policy):
    options = [("grpc.lb_policy_name", policy)] if policy else []
    # For a multi-address target (ipv4:a,b,c) grpcio sends the whole list, percent-
    # encoded, as :authority, which the Rust h2 server rejects as an invalid authority
    # (RST_STREAM PROTOCOL_ERROR). Any single host name will do.
    if "," in target:
        options.append(("grpc.default_authority", "localhost"))
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = example_pb2_grpc.MyServiceStub(channel)
        request = example_pb2.HelloRequest(name="bench")
        latencies = []
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker():
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                await stub.SayHello(request)
                done = time.perf_counter()
                if sent >= measure_from:
                    latencies.append((done - sent) * 1e6)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.sort()
        print(
            json.dumps(
                {
                    "calls": len(latencies),
                    "seconds": duration,
                    "p50_us": percentile(latencies, 0.50),
                    "p99_us": percentile(latencies, 0.99),
                    "p999_us": percentile(latencies, 0.999),
                }
            )
        )


if __name__ == "__main__":
    target, concurrency, duration, warmup = sys.argv[1:5]
    policy = sys.argv[5] if len(sys.argv) > 5 else None
    asyncio.run(main(target, int(concurrency), float(duration), float(warmup), policy))
