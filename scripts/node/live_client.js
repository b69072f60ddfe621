// grpc-js's round_robin under load, printing what greeter-client --live prints.
//
//   node live_client.js ipv4:127.0.0.1:50051,127.0.0.1:50052 CONCURRENCY TIMEOUT_S DURATION_S
//
// The same as scripts/python/live_client.py, with @grpc/grpc-js and @grpc/proto-loader
// (installed from npm by scripts/resilience.sh) and the article's proto/example.proto.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, concurrency, timeoutS, durationS] = process.argv.slice(2);
const proto = grpc.loadPackageDefinition(
  loader.loadSync(path.join(__dirname, '..', '..', 'proto', 'example.proto')));
const client = new proto.example.MyService(target, grpc.credentials.createInsecure(), {
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
  // A multi-address target would be sent whole as :authority (see the README).
  'grpc.default_authority': 'localhost',
});
const hosts = target.split(':').slice(1).join(':').split(',');
const served = Object.fromEntries(hosts.map((h) => [h, 0]));
const totals = { ok: 0, failed: 0 };
const start = Date.now();
const stopAt = start + Number(durationS) * 1000;

function call() {
  return new Promise((resolve) => {
    let by = '?';
    const c = client.SayHello({ name: 'world' },
      { deadline: new Date(Date.now() + Number(timeoutS) * 1000) },
      (err) => {
        if (err) { totals.failed += 1; } else { totals.ok += 1; served[by] = (served[by] || 0) + 1; }
        // Yield to the event loop even when a call fails at once.
        setImmediate(resolve);
      });
    c.on('metadata', (md) => { const v = md.get('x-served-by'); if (v.length) by = String(v[0]); });
  });
}

async function worker() {
  while (Date.now() < stopAt) { await call(); }
}

let last = { ...served };
let t = 0;
const ticker = setInterval(() => {
  t += 1;
  const parts = hosts.map((h) => `${h} ${(served[h] || 0) - (last[h] || 0)}/s -`);
  last = { ...served };
  console.log(`t=${t}s ok=${totals.ok} failed=${totals.failed} retries=0 | ${parts.join(' | ')}`);
  if (t >= Number(durationS)) clearInterval(ticker);
}, 1000);

Promise.all(Array.from({ length: Number(concurrency) }, worker)).then(() => {
  setTimeout(() => { console.log(JSON.stringify(totals)); client.close(); process.exit(0); }, 1100);
});
