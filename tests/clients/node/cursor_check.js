// node-postgres with pg-cursor and pg-query-stream through pgfleet. Both packages send
// Parse/Bind/Describe/Flush and then Execute/Flush (or Close/Sync) without waiting, so a proxy that
// forwards only up to the first Flush of a read leaves the session hanging. Every check asserts its rows.
//
// Usage: node cursor_check.js CONNECTION_STRING [ROUNDS]
// Exits 0 when every round passed; prints the first failure and exits 1 otherwise (a hang counts as one).

'use strict';

const { Client } = require('pg');
const Cursor = require('pg-cursor');
const QueryStream = require('pg-query-stream');

const url = process.argv[2];
const rounds = Number(process.argv[3] || 40);
const ROUND_TIMEOUT_MS = 20000;
const ROWS = 1000;
const EXPECTED_SUM = (ROWS * (ROWS + 1)) / 2;

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ROUND_TIMEOUT_MS} ms (hung)`)), ROUND_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function cursorRound(client, batch) {
  const cursor = client.query(new Cursor('SELECT g FROM generate_series(1, $1::int) g', [ROWS]));
  let count = 0;
  let sum = 0;
  for (;;) {
    const rows = await cursor.read(batch);
    if (rows.length === 0) break;
    for (const r of rows) {
      count += 1;
      sum += Number(r.g);
    }
  }
  await cursor.close();
  check(count === ROWS, `cursor(batch ${batch}) read ${count} rows, expected ${ROWS}`);
  check(sum === EXPECTED_SUM, `cursor(batch ${batch}) sum ${sum}, expected ${EXPECTED_SUM}`);
}

async function cursorClosedEarly(client) {
  const cursor = client.query(new Cursor('SELECT g FROM generate_series(1, $1::int) g', [ROWS]));
  const rows = await cursor.read(10);
  check(rows.length === 10 && Number(rows[9].g) === 10, `first 10 rows of a cursor: ${JSON.stringify(rows)}`);
  await cursor.close();
  const after = await client.query('SELECT 41 + 1 AS n');
  check(after.rows[0].n === 42, `query after a closed cursor: ${JSON.stringify(after.rows)}`);
}

function streamRound(client) {
  return new Promise((resolve, reject) => {
    const stream = client.query(new QueryStream('SELECT g FROM generate_series(1, $1::int) g', [ROWS], { batchSize: 100 }));
    let count = 0;
    let sum = 0;
    stream.on('data', (r) => {
      count += 1;
      sum += Number(r.g);
    });
    stream.on('error', reject);
    stream.on('end', () => {
      try {
        check(count === ROWS, `query stream read ${count} rows, expected ${ROWS}`);
        check(sum === EXPECTED_SUM, `query stream sum ${sum}, expected ${EXPECTED_SUM}`);
        resolve();
      } catch (e) {
        reject(e);
      }
    });
  });
}

async function round(i) {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    await cursorRound(client, 100);
    await cursorRound(client, 1 + (i % 7));
    await cursorClosedEarly(client);
    await streamRound(client);
  } finally {
    await client.end();
  }
}

async function main() {
  for (let i = 0; i < rounds; i++) {
    await withTimeout(round(i), `round ${i}`);
  }
  console.log(`node-postgres cursor and stream: ${rounds} rounds passed`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`FAILED: ${e.stack || e}`);
    process.exit(1);
  },
);
