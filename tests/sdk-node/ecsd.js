'use strict';
// A real `ecsd serve --dev` driven by the official Huawei Node.js SDK
// (@huaweicloud/huaweicloud-sdk-core + -ecs, pinned in package.json).
// package.json also pins `uuid`: core 3.1.211 requires it (http/DefaultUserAgent.js)
// without declaring it, so without it the SDK cannot even be loaded.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const { BasicCredentials } = require('@huaweicloud/huaweicloud-sdk-core');
const { ClientBuilder } = require('@huaweicloud/huaweicloud-sdk-core/ClientBuilder');
const { Logger4jInstance } = require('@huaweicloud/huaweicloud-sdk-core/logger/log4jLogger');
const { EcsClient } = require('@huaweicloud/huaweicloud-sdk-ecs');

const ROOT = path.resolve(__dirname, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
const ECSD = process.env.ECSD_BIN || path.join(TARGET, process.env.ECS_PROFILE || 'debug', 'ecsd');

// The SDK logs every error response (request headers and body included) to
// stdout through log4js; the tests assert on the exceptions instead.
// DEBUG=DEBUG (the SDK's own switch) or ECSD_SDK_LOG=1 keeps the log.
if (!process.env.ECSD_SDK_LOG && process.env.DEBUG !== 'DEBUG') {
  Logger4jInstance.level = 'off';
}

class Ecsd {
  /** Starts `ecsd serve --dev` on a free port; resolves once the credentials file is written. */
  static async start() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ecsd-sdk-node-'));
    const dataDir = path.join(dir, 'data');
    const logPath = path.join(dir, 'ecsd.log');
    const log = fs.openSync(logPath, 'w');
    const proc = spawn(ECSD, ['--data-dir', dataDir, 'serve', '--dev', '--listen', '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    fs.closeSync(log);
    // If this process ends without after() (a crash, process.exit), take ecsd along.
    const reap = () => proc.kill('SIGKILL');
    process.on('exit', reap);
    proc.once('exit', () => process.off('exit', reap));
    const tail = () => fs.readFileSync(logPath, 'utf8').slice(-2000);
    const credPath = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`ecsd printed no credentials line in 60 s:\n${tail()}`)), 60_000);
      const lines = readline.createInterface({ input: proc.stdout });
      function done(err, value) {
        clearTimeout(timer);
        proc.off('exit', onExit);
        proc.off('error', done);
        lines.off('line', onLine);
        // Keep draining stdout (the banner continues after the credentials line).
        lines.on('line', () => {});
        if (err) {
          proc.kill('SIGKILL');
          reject(err);
        } else {
          resolve(value);
        }
      }
      function onLine(line) {
        if (line.startsWith('credentials: ')) done(null, line.slice('credentials: '.length).trim());
      }
      function onExit(code, signal) {
        done(new Error(`ecsd exited (${code ?? signal}) before it was ready:\n${tail()}`));
      }
      lines.on('line', onLine);
      proc.on('exit', onExit);
      proc.on('error', done);
    });
    return new Ecsd(proc, dir, JSON.parse(fs.readFileSync(credPath, 'utf8')));
  }

  constructor(proc, dir, creds) {
    this.proc = proc;
    this.dir = dir;
    this.creds = creds;
    this.endpoint = creds.endpoint;
    this.projectId = creds.project_id;
    this.servers = creds.servers;
  }

  /**
   * The SDK's options for this server. The Node SDK has no CA setting of its
   * own, but `withOptions({axiosRequestConfig})` is merged into the config of
   * the axios instance that sends every request (http/DefaultHttpClient.js,
   * `_createAxiosInstance`), so an https.Agent that trusts the dev CA goes
   * there. Certificate verification stays on.
   */
  sdkOptions({ trustDevCa = true } = {}) {
    if (!this.creds.ca_file || !trustDevCa) return undefined;
    const ca = fs.readFileSync(this.creds.ca_file);
    return { axiosRequestConfig: { httpsAgent: new https.Agent({ ca }) } };
  }

  credentials({ ak, sk, projectId } = {}) {
    return new BasicCredentials()
      .withAk(ak || this.creds.ak)
      .withSk(sk || this.creds.sk)
      .withProjectId(projectId || this.projectId);
  }

  /** An EcsClient exactly as an SDK user builds one for a private endpoint. */
  client(opts = {}) {
    const builder = EcsClient.newBuilder().withCredential(this.credentials(opts)).withEndpoint(this.endpoint);
    const options = this.sdkOptions(opts);
    if (options) builder.withOptions(options);
    return builder.build();
  }

  /**
   * The SDK's generic client (core HcClient, the object every generated
   * EcsClient method hands its request to): it fills {project_id}, signs with
   * the SDK's AKSKSigner through BasicCredentials.processAuthRequest, sends
   * through the same axios instance (and CA), and maps errors to the SDK's
   * exceptions. Used for our extension endpoints, which EcsClient lacks.
   */
  hcClient(opts = {}) {
    const builder = new ClientBuilder((hc) => hc).withCredential(this.credentials(opts)).withEndpoint(this.endpoint);
    const options = this.sdkOptions(opts);
    if (options) builder.withOptions(options);
    return builder.build();
  }

  /** GET .../os-reset-passwords/{request_id} (our extension; `latest` allowed), SDK-signed. */
  resetOutcome(requestId) {
    return this.hcClient().sendRequest({
      method: 'GET',
      url: '/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}',
      contentType: 'application/json',
      queryParams: {},
      pathParams: { request_id: requestId },
      headers: {},
    });
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((resolve) => this.proc.once('exit', resolve));
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }
    if (!process.env.ECSD_KEEP_DATA) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

module.exports = { Ecsd, ECSD };
