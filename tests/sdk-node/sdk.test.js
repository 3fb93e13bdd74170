'use strict';
// The public API through the official Huawei Node.js SDK, unmodified.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { after, before, test } = require('node:test');

const { ClientRequestException } = require('@huaweicloud/huaweicloud-sdk-core/exception/ClientRequestException');
const {
  BatchResetServersPasswordRequest,
  BatchResetServersPasswordRequestBody,
  ListServersDetailsRequest,
  ResetServerPasswordOption,
  ResetServerPasswordRequest,
  ResetServerPasswordRequestBody,
  ServerId,
  ShowResetPasswordFlagRequest,
} = require('@huaweicloud/huaweicloud-sdk-ecs');

const { Ecsd } = require('./ecsd');

const GOOD = 'Gx7!pLq2vR';
const STATES = ['PENDING', 'DELIVERED', 'APPLIED', 'FAILED', 'SUPERSEDED'];

let ecsd;
let client;

before(async () => {
  ecsd = await Ecsd.start();
  client = ecsd.client();
});

after(async () => {
  if (ecsd) await ecsd.stop();
});

function batch(ids, password = GOOD) {
  const body = new BatchResetServersPasswordRequestBody()
    .withServers(ids.map((id) => new ServerId(id)));
  if (password !== undefined) body.withNewPassword(password);
  return new BatchResetServersPasswordRequest().withBody(body);
}

/** Runs `call`, expects the SDK's ClientRequestException; returns it. */
async function expectError(call, status, code) {
  let error;
  try {
    await call();
  } catch (e) {
    error = e;
  }
  assert.ok(error, 'the call succeeded');
  assert.ok(error instanceof ClientRequestException, `not a ClientRequestException: ${error && error.stack}`);
  assert.equal(error.httpStatusCode, status, `${error.errorCode}: ${error.errorMsg}`);
  assert.equal(error.errorCode, code, error.errorMsg);
  assert.match(error.requestId, /^[0-9a-f]{32}$/, 'X-Request-Id of the error');
  return error;
}

/** Whether NODE_EXTRA_CA_CERTS (trusted process-wide) already contains the CA in `caFile`. */
function extraCasInclude(caFile) {
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (!extra) return false;
  const squash = (pem) => pem.replace(/-----[A-Z ]+-----|\s/g, '');
  try {
    return squash(fs.readFileSync(extra, 'utf8')).includes(squash(fs.readFileSync(caFile, 'utf8')));
  } catch {
    return false;
  }
}

test('batch reset of the whole dev fleet, then its outcome through the SDK signer', async () => {
  const ids = ecsd.servers.map((s) => s.id);
  assert.ok(ids.length >= 2, `dev fleet too small: ${ids.length}`);
  const resp = await client.batchResetServersPassword(batch(ids));
  assert.equal(resp.httpStatusCode, 200);
  assert.deepEqual(resp.response.map((r) => r.id), ids);

  // The Node SDK drops the headers of a success: HcClient.extractResponse
  // returns only the body plus httpStatusCode, and DefaultHttpClient copies a
  // header into the body only when the operation lists it in responseHeaders,
  // which is [''] for batchResetServersPassword. So the id is `latest` unless
  // a later SDK starts exposing it.
  const requestId = resp['X-Request-Id'] || 'latest';
  const outcome = await ecsd.resetOutcome(requestId);
  assert.equal(outcome.httpStatusCode, 200);
  assert.match(outcome.request_id, /^[0-9a-f]{32}$/);
  if (requestId !== 'latest') assert.equal(outcome.request_id, requestId);
  assert.deepEqual(outcome.servers.map((s) => s.id).sort(), [...ids].sort());
  for (const s of outcome.servers) assert.ok(STATES.includes(s.state), `${s.id}: ${s.state}`);
  assert.equal(Object.values(outcome.summary).reduce((a, b) => a + b, 0), ids.length);
  assert.equal(typeof outcome.complete, 'boolean');

  // The same id read back by its own value.
  const again = await ecsd.resetOutcome(outcome.request_id);
  assert.equal(again.request_id, outcome.request_id);
});

test('an unknown outcome id is an SDK error', async () => {
  await expectError(() => ecsd.resetOutcome('0'.repeat(32)), 400, 'Common.0011');
});

for (const [password, rule] of [
  ['password', /at least three of/],
  ['P@ssw0rd', /well-known weak password/],
  ['Gx7!', /length must range from/],
]) {
  test(`a weak password (${password}) is Ecs.0011 naming the rule`, async () => {
    const ids = ecsd.servers.map((s) => s.id);
    const e = await expectError(() => client.batchResetServersPassword(batch(ids, password)), 400, 'Ecs.0011');
    assert.match(e.errorMsg, rule);
    // Never echoed ("password" itself is also a word of every message).
    const rest = e.errorMsg.replace(/The password|weak password/g, '');
    assert.ok(!rest.includes(password), `the message echoes the password: ${e.errorMsg}`);
  });
}

test('an unknown server id is a 400 batch rejection, Ecs.0114, naming the id', async () => {
  const ids = [ecsd.servers[0].id, 'no-such-server'];
  const e = await expectError(() => client.batchResetServersPassword(batch(ids)), 400, 'Ecs.0114');
  assert.match(e.errorMsg, /no-such-server/);
  assert.match(e.errorMsg, /1 of 2/);
});

test('single reset answers 204 and the reset-password flag is True', async () => {
  const sid = ecsd.servers[0].id;
  const body = new ResetServerPasswordRequestBody(new ResetServerPasswordOption(GOOD));
  const resp = await client.resetServerPassword(new ResetServerPasswordRequest(sid).withBody(body));
  assert.equal(resp.httpStatusCode, 204);

  for (const s of ecsd.servers) {
    const flag = await client.showResetPasswordFlag(new ShowResetPasswordFlagRequest(s.id));
    assert.equal(flag.httpStatusCode, 200);
    assert.equal(flag.resetpwd_flag, 'True', s.name);
  }
});

test('ListServersDetails returns the dev fleet', async () => {
  const resp = await client.listServersDetails(new ListServersDetailsRequest());
  assert.equal(resp.httpStatusCode, 200);
  assert.equal(resp.count, ecsd.servers.length);
  const byId = (a) => [...a].sort((x, y) => x.id.localeCompare(y.id));
  assert.deepEqual(
    byId(resp.servers).map((s) => [s.id, s.name]),
    byId(ecsd.servers).map((s) => [s.id, s.name]),
  );
  for (const s of resp.servers) {
    assert.equal(typeof s.status, 'string');
    assert.equal(typeof s.addresses, 'object');
  }
});

test('a wrong secret key is refused by the signature check', async () => {
  const bad = ecsd.client({ sk: 'not-the-secret-key-at-all' });
  const e = await expectError(() => bad.batchResetServersPassword(batch([ecsd.servers[0].id])), 401, 'APIGW.0301');
  assert.match(e.errorMsg, /verify aksk signature fail/);
});

test('over https, the SDK verifies the certificate: without the dev CA it refuses', async (t) => {
  if (!ecsd.creds.ca_file) {
    t.skip(`plain http endpoint (${ecsd.endpoint}), no ca_file in dev-credentials.json`);
    return;
  }
  if (extraCasInclude(ecsd.creds.ca_file)) {
    t.skip('NODE_EXTRA_CA_CERTS already holds the dev CA');
    return;
  }
  assert.ok(ecsd.endpoint.startsWith('https://'), ecsd.endpoint);
  const untrusting = ecsd.client({ trustDevCa: false });
  let error;
  try {
    await untrusting.listServersDetails(new ListServersDetailsRequest());
  } catch (e) {
    error = e;
  }
  assert.ok(error, 'a server certificate from an unknown CA was accepted');
  assert.equal(error.httpStatusCode, undefined, 'no HTTP answer expected');
  assert.match(String(error.errorMsg), /certificate|self[- ]signed|issuer/i);
});
