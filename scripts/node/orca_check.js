// Reads a server's ORCA load reports (gRFC A51) with Node's @grpc/grpc-js, for
// scripts/interop.sh: the out-of-band stream xds.service.orca.v3.OpenRcaService/
// StreamCoreMetrics, and the endpoint-load-metrics-bin trailer of SayHello answers,
// decoded as an xds.data.orca.v3.OrcaLoadReport by protobufjs. grpcio reads the stream
// too (scripts/python/orca_check.py), but its core keeps that trailer for itself.
//
//   node orca_check.js HOST:PORT
//
// Prints one JSON line: the first out-of-band report and the first per-call one that
// counts calls per second.
// @grpc/grpc-js and @grpc/proto-loader come from npm (scripts/interop.sh installs
// them); proto-loader and protobufjs read proto/ themselves: no protoc.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const target = process.argv[2];
if (!target) {
  console.error('usage: node orca_check.js HOST:PORT');
  process.exit(2);
}
const protoDir = path.join(__dirname, '..', '..', 'proto');
const options = { includeDirs: [protoDir], keepCase: true, longs: Number };
const proto = grpc.loadPackageDefinition(loader.loadSync(
  ['example.proto', 'xds/service/orca/v3/orca.proto'], options));
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(protoDir, target);
root.loadSync('xds/data/orca/v3/orca_load_report.proto', { keepCase: true });
const OrcaLoadReport = root.lookupType('xds.data.orca.v3.OrcaLoadReport');
const asObject = (message) => OrcaLoadReport.toObject(message, { longs: Number, defaults: false });

const deadline = () => new Date(Date.now() + 10000);

function firstOutOfBand() {
  const client = new proto.xds.service.orca.v3.OpenRcaService(target, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const stream = client.StreamCoreMetrics({ report_interval: { seconds: 1 } }, { deadline: deadline() });
    stream.on('data', (report) => {
      stream.cancel();
      client.close();
      resolve(report);
    });
    stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

function trailerOfOneCall(client) {
  return new Promise((resolve, reject) => {
    const call = client.SayHello({ name: 'orca' }, { deadline: deadline() }, (err) => {
      if (err) reject(err);
    });
    call.on('status', (status) => {
      const values = status.metadata.get('endpoint-load-metrics-bin');
      resolve(values.length > 0 ? asObject(OrcaLoadReport.decode(values[0])) : null);
    });
  });
}

async function main() {
  const oob = await firstOutOfBand();
  const client = new proto.example.MyService(target, grpc.credentials.createInsecure());
  // Calls until a trailer reports calls per second (the first measuring window has
  // closed: half a second), 2,000 calls at most.
  let trailer = null;
  for (let i = 0; i < 2000 && !(trailer && trailer.rps_fractional > 0); i += 1) {
    const report = await trailerOfOneCall(client);
    if (report !== null) trailer = report;
  }
  client.close();
  console.log(JSON.stringify({ oob, trailer }));
}

main().catch((err) => {
  console.error(`orca_check: ${err.message}`);
  process.exit(1);
});
