#!/usr/bin/env node
// A minimal omnirec client in Node.js that knows only the .proto files (no generated code):
//
//   npm install                      # in examples/node
//   node client.js --target 127.0.0.1:50051 --api-key KEY --member-id m0000001 [--k 5] [--store-id s1]
//   node client.js ... --view ITEM    # also record that the member viewed ITEM (TrackEvents)
//
// What an app team in another language needs: the protos loaded with @grpc/proto-loader, an API key in
// `x-api-key` metadata, a deadline on every call, times as google.protobuf.Timestamp, money as integer
// minor units, and on failure the status code plus the field violations of the rich error details
// (google.rpc.BadRequest in the `grpc-status-details-bin` trailer).
'use strict';

const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const THIRD_PARTY = path.join(__dirname, 'third_party');
const DEADLINE_MS = 2000;

// keepCase: fields keep their proto names (member_id); longs as strings: int64 values (price_minor_units,
// Timestamp seconds) do not fit a JS number in general.
const definition = protoLoader.loadSync(
  ['omnirec/v1/recommendation.proto', 'omnirec/v1/events.proto'],
  { includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true });
const omnirec = grpc.loadPackageDefinition(definition).omnirec.v1;

// google.rpc.Status and BadRequest (copied from googleapis into third_party/), to decode the rich error
// details; protobufjs bundles the google/protobuf/*.proto files they import.
const rpc = new protobuf.Root();
rpc.resolvePath = (origin, target) => path.join(THIRD_PARTY, target);
rpc.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = rpc.lookupType('google.rpc.Status');
const BadRequest = rpc.lookupType('google.rpc.BadRequest');

/** The field violations in an error's `grpc-status-details-bin` trailer: [{field, description}]. */
function fieldViolations(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return [];
  return Status.decode(raw).details
    .filter((any) => any.type_url === 'type.googleapis.com/google.rpc.BadRequest')
    .flatMap((any) => BadRequest.decode(any.value).field_violations);
}

function call(client, method, request, apiKey) {
  const metadata = new grpc.Metadata();
  metadata.set('x-api-key', apiKey);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      target: { type: 'string', default: '127.0.0.1:50051' },
      'api-key': { type: 'string' },
      'member-id': { type: 'string' },
      channel: { type: 'string', default: 'app' },
      'store-id': { type: 'string', default: '' },
      k: { type: 'string', default: '5' },
      view: { type: 'string' },
    },
  });
  if (!args['api-key'] || !args['member-id']) {
    console.error('usage: node client.js --api-key KEY --member-id ID [--target HOST:PORT] [--k N] [--view ITEM]');
    return 2;
  }
  const channel = `CHANNEL_${args.channel.toUpperCase()}`;
  const credentials = grpc.credentials.createInsecure();
  try {
    if (args.view) {
      const events = new omnirec.EventService(args.target, credentials);
      const now = Date.now();
      const reply = await call(events, 'TrackEvents', {
        events: [{
          event_id: `node-${args['member-id']}-${now}`, member_id: args['member-id'], item_id: args.view,
          channel, store_id: args['store-id'], event_type: 'EVENT_TYPE_VIEW', price_minor_units: '0',
          event_time: { seconds: String(Math.floor(now / 1000)), nanos: (now % 1000) * 1e6 },
        }],
      }, args['api-key']);
      console.log(`tracked: ${reply.accepted} accepted, ${reply.duplicates} duplicates`);
    }
    const recommendations = new omnirec.RecommendationService(args.target, credentials);
    const reply = await call(recommendations, 'Recommend', {
      member_id: args['member-id'], channel, store_id: args['store-id'], k: Number(args.k),
      filter: { in_stock_only: true }, exclude_purchased: true,
    }, args['api-key']);
    const { info, items } = reply;
    console.log(`member ${reply.member_id || args['member-id']}: model ${info.model_version}` +
      (info.degraded ? ` (degraded: ${info.degraded_reason})` : ''));
    items.item_ids.forEach((id, i) => {
      console.log(`  ${id.padEnd(12)} ${items.scores[i].toFixed(3).padStart(8)}  ${items.reasons[i]}`);
    });
    return 0;
  } catch (err) {
    console.error(`${grpc.status[err.code]}: ${err.details}`);
    for (const v of fieldViolations(err)) console.error(`  field ${v.field}: ${v.description}`);
    return 1;
  }
}

main().then((code) => { process.exitCode = code; });
