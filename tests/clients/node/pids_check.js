// node-postgres through pgfleet: the pid in a client's notifications is the processID BackendKeyData gave
// the notifying client (its own for a self-notification, which drivers recognise by comparing the two),
// and pg_cancel_backend($1) with another client's processID (extended protocol, text parameter) cancels
// that client's query.
//
// Usage: node pids_check.js CONNECTION_STRING
// Prints "ok" and exits 0 when every check passed; prints the failure and exits 1 otherwise.

'use strict';

const { Client } = require('pg');

const url = process.argv[2];
const WAIT_MS = 10000;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

// Resolves with the next notification on `client`, or fails after WAIT_MS.
function nextNotification(client) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no notification within 10 s')), WAIT_MS);
    client.once('notification', (msg) => {
      clearTimeout(timer);
      resolve(msg);
    });
  });
}

async function main() {
  const a = new Client({ connectionString: url });
  const b = new Client({ connectionString: url });
  await a.connect();
  await b.connect();
  check(Number.isInteger(a.processID) && a.processID !== b.processID, `processIDs ${a.processID} ${b.processID}`);

  await a.query('LISTEN pids_node');
  let heard = nextNotification(a);
  await a.query("NOTIFY pids_node, 'self'");
  let msg = await heard;
  check(msg.processId === a.processID, `self-notification from ${msg.processId}, own processID ${a.processID}`);
  check(msg.payload === 'self', `payload ${msg.payload}`);

  heard = nextNotification(a);
  await b.query("NOTIFY pids_node, 'from b'");
  msg = await heard;
  check(msg.processId === b.processID, `notification from ${msg.processId}, b's processID ${b.processID}`);

  // b cancels c's sleep by c's processID, wherever the sleep runs. The cancel is repeated until the sleep
  // has ended: one that arrives before the sleep starts on its node finds nothing to cancel.
  const c = new Client({ connectionString: url });
  await c.connect();
  let settled = false;
  const sleeping = c.query('SELECT pg_sleep(30)').then(
    () => null,
    (err) => err,
  ).finally(() => {
    settled = true;
  });
  const started = Date.now();
  while (!settled) {
    check(Date.now() - started < WAIT_MS, 'the sleep was not cancelled within 10 s');
    const r = await b.query('SELECT pg_cancel_backend($1)', [c.processID]);
    check(r.fields[0].name === 'pg_cancel_backend', `column ${r.fields[0].name}`);
    check(r.fields[0].dataTypeID === 16, `column type ${r.fields[0].dataTypeID}`);
    check(r.rows[0].pg_cancel_backend === true, `pg_cancel_backend answered ${r.rows[0].pg_cancel_backend}`);
    await Promise.race([sleeping, new Promise((resolve) => setTimeout(resolve, 100))]);
  }
  const err = await sleeping;
  check(err && err.code === '57014', `c's sleep ended with ${err && err.code}`);

  await Promise.all([a.end(), b.end(), c.end()]);
  console.log('ok');
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
