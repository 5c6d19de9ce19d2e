// node-postgres ending a client right after starting to connect: pg queues a Terminate message that
// reaches the server before the startup packet. PostgreSQL closes such a connection without a word, so
// neither connect() nor end() fails; through pgfleet the same must hold.
//
// Usage: node end_at_once.js CONNECTION_STRING [ROUNDS]
// Exits 0 when every round ended without an error; prints the first error and exits 1 otherwise.

'use strict';

const { Client } = require('pg');

const url = process.argv[2];
const rounds = Number(process.argv[3] || 5);

async function round(i) {
  const client = new Client({ connectionString: url });
  const errors = [];
  client.on('error', (e) => errors.push(`round ${i}: client error event: ${e.message}`));
  // Not awaited before end(): that is the case under test. Against PostgreSQL this promise never settles
  // (the server closes the connection without an answer); an ErrorResponse would reject it.
  client.connect().catch((e) => errors.push(`round ${i}: connect() failed: ${e.message}`));
  try {
    await client.end();
  } catch (e) {
    errors.push(`round ${i}: end() failed: ${e.message}`);
  }
  // end() settles when the socket closes, after any message that arrived before; one more turn of the
  // event loop lets a rejection of connect() run its handler.
  await new Promise((resolve) => setImmediate(resolve));
  return errors;
}

(async () => {
  for (let i = 0; i < rounds; i++) {
    const errors = await round(i);
    if (errors.length > 0) {
      console.log(errors.join('\n'));
      process.exit(1);
    }
  }
  console.log(`${rounds} rounds of connect() + end() at once ended without an error`);
  process.exit(0);
})();
