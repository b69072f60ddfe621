"""grpcio's own round_robin under load, printing what greeter-client --live prints.

    python live_client.py ipv4:127.0.0.1:50051,127.0.0.1:50052 CONCURRENCY TIMEOUT_S DURATION_S

CONCURRENCY coroutines on grpc.aio each send the next SayHello when the last returns,
with a deadline of TIMEOUT_S. Every second one line, the same format as greeter-client:

    t=3s ok=2400 failed=0 retries=0 | 127.0.0.1:50051 800/s - | ...

(calls per server are counted by the x-served-by metadata of the answers; grpcio does
not say where a failed call went). At the end, one JSON line: {"ok": N, "failed": N}.
scripts/resilience.sh runs it next to greeter-client and grpc-js.
"""

import asyncio
import json
import sys
import time

import grpc

import example_pb2
import example_pb2_grpc


async def main(target, concurrency, timeout, duration):
    hosts = target.split(":", 1)[1].split(",")
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        # A multi-address target would be sent whole as :authority (see the README).
        ("grpc.default_authority", "localhost"),
    ]
    served = {h: 0 for h in hosts}
    totals = {"ok": 0, "failed": 0}
    start = time.monotonic()
    stop_at = start + duration
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = example_pb2_grpc.MyServiceStub(channel)

        async def worker():
            while time.monotonic() < stop_at:
                call = stub.SayHello(example_pb2.HelloRequest(name="world"), timeout=timeout)
                try:
                    await call
                    metadata = await call.initial_metadata()
                    by = dict(metadata).get("x-served-by", "?")
                    served[by] = served.get(by, 0) + 1
                    totals["ok"] += 1
                except grpc.aio.AioRpcError:
                    totals["failed"] += 1
                    # As greeter-client does when nothing is usable: no spinning.
                    await asyncio.sleep(0)

        async def live():
            last = dict(served)
            for t in range(1, int(duration) + 1):
                await asyncio.sleep(max(0.0, start + t - time.monotonic()))
                parts = [f"{h} {served.get(h, 0) - last.get(h, 0)}/s -" for h in hosts]
                last = dict(served)
                print(f"t={t}s ok={totals['ok']} failed={totals['failed']} retries=0 | "
                      + " | ".join(parts), flush=True)

        await asyncio.gather(live(), *(worker() for _ in range(concurrency)))
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
