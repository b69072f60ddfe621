// A closed-loop load from Node's @grpc/grpc-js, for scripts/bench.sh: the same as
// scripts/python/bench_client.py, with grpc-js's round_robin.
//
//   node bench_client.js TARGET CONCURRENCY DURATION_S WARMUP_S [round_robin]
//
// TARGET is a gRPC target; `ipv4:127.0.0.1:50051,127.0.0.1:50052` balances over
// several. CONCURRENCY callers each send the next call as soon as the last returns.
// Prints one JSON line: calls, seconds, and latency percentiles in microseconds.
// @grpc/grpc-js and @grpc/proto-loader come from npm (scripts/bench.sh installs them);
// proto-loader reads the article's proto/example.proto itself: no protoc.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, concurrency, durationS, warmupS, policy] = process.argv.slice(2);
if (!target || !(Number(concurrency) > 0) || !(Number(durationS) > 0) || !(Number(warmupS) >= 0)) {
  console.error('usage: node bench_client.js TARGET CONCURRENCY DURATION_S WARMUP_S [round_robin]');
  process.exit(2);
}
const proto = grpc.loadPackageDefinition(
  loader.loadSync(path.join(__dirname, '..', '..', 'proto', 'example.proto')));
const options = {};
if (policy) {
  options['grpc.service_config'] = JSON.stringify({ loadBalancingConfig: [{ [policy]: {} }] });
}
// A multi-address target would be sent whole as :authority, which h2 servers refuse.
if (target.includes(',')) options['grpc.default_authority'] = 'localhost';
const client = new proto.example.MyService(target, grpc.credentials.createInsecure(), options);

const now = () => Number(process.hrtime.bigint()) / 1000; // microseconds
const start = now();
const measureFrom = start + Number(warmupS) * 1e6;
const stopAt = measureFrom + Number(durationS) * 1e6;
const latencies = [];
let errors = 0;

function call() {
  return new Promise((resolve) => {
    const sent = now();
    client.SayHello({ name: 'bench' }, (err) => {
      if (sent >= measureFrom) {
        if (err) errors += 1; else latencies.push(now() - sent);
      }
      resolve();
    });
  });
}

async function worker() {
  while (now() < stopAt) await call();
}

function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

Promise.all(Array.from({ length: Number(concurrency) }, worker)).then(() => {
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify({
    calls: latencies.length,
    seconds: Number(durationS),
    errors,
    p50_us: percentile(latencies, 0.5),
    p99_us: percentile(latencies, 0.99),
    p999_us: percentile(latencies, 0.999),
  }));
  client.close();
});
