// The servers the tests call. liveServer(): VISIONSEARCH_ADDRESS when set (the pytest suite passes its own),
// otherwise a fresh `python -m server` on port 0 from the repository's .venv (VISIONSEARCH_PYTHON overrides),
// with its own data folder and no default collection. secureServers(): two servers with TLS and API keys, one
// of them also requiring client certificates, described by the JSON file VISIONSEARCH_SECURE_SERVERS names
// (the pytest suite writes it), otherwise started here with fresh certificates (python -m tests.pki) and keys
// (visionsearch-admin keys add). stop() stops what was started here.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

// dist/test/server.js -> the repository root, four levels up.
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

export interface LiveServer {
  address: string;
  stop(): Promise<void>;
}

export interface SecureServers {
  /** host:port of a server with TLS and API keys. */
  tls: string;
  /** host:port of a server with TLS and API keys that also requires client certificates from the CA. */
  mtls: string;
  /**
   * The folder of the PEM files (NAME.pem, NAME-key.pem; tests/pki.py's client_certificates): the CA (ca) that
   * signed the servers' certificate and the client's (client), and server certificates a client must refuse
   * (expired, wrong-host, self-signed).
   */
  pki: string;
  /** API keys with the roles read and admin. */
  keys: { read: string; admin: string };
  stop(): Promise<void>;
}

const python = (): string => process.env.VISIONSEARCH_PYTHON ?? join(REPO_ROOT, ".venv", "bin", "python");

// The server reads VISIONSEARCH_* too: drop any that the caller's environment sets.
const serverEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VISIONSEARCH_")));

/** `python -m server` on 127.0.0.1:0 with its own data folder; resolves once it listens. */
async function spawnServer(extra: string[]): Promise<LiveServer> {
  const dataDir = mkdtempSync(join(tmpdir(), "visionsearch-ts-"));
  const args = ["-m", "server", "--address", "127.0.0.1:0", "--data-dir", dataDir, "--no-default-collection",
    "--no-fsync", "--log-level", "WARNING", ...extra];
  const child: ChildProcess = spawn(python(), args, { cwd: REPO_ROOT, env: serverEnv(),
    stdio: ["ignore", "pipe", "inherit"] });
  const address = await new Promise<string>((ok, fail) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const m = /listening on (\S+)/.exec(line);
      if (m) ok(m[1]);
    });
    child.on("exit", (code) => fail(new Error(`server exited with ${code} before listening (${python()})`)));
    child.on("error", fail);
  });
  return {
    address,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.on("exit", ok));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export async function liveServer(): Promise<LiveServer> {
  const given = process.env.VISIONSEARCH_ADDRESS;
  if (given) return { address: given, stop: async () => {} };
  return spawnServer([]);
}

export async function secureServers(): Promise<SecureServers> {
  const given = process.env.VISIONSEARCH_SECURE_SERVERS;
  if (given) return { ...JSON.parse(readFileSync(given, "utf8")), stop: async () => {} };

  const pki = mkdtempSync(join(tmpdir(), "visionsearch-ts-pki-"));
  const py = (...args: string[]): string =>
    execFileSync(python(), args, {
      cwd: REPO_ROOT, env: serverEnv(), encoding: "utf8", stdio: ["ignore", "pipe", "inherit"],
    });
  py("-m", "tests.pki", pki);
  const keyFile = join(pki, "keys.json");
  const addKey = (role: string): string =>
    py("-m", "server.admin", "keys", "add", keyFile, "--name", role, "--role", role).split("\n")[0];
  const keys = { read: addKey("read"), admin: addKey("admin") };
  const tlsArgs = ["--tls-cert", join(pki, "server.pem"), "--tls-key", join(pki, "server-key.pem"),
    "--api-keys", keyFile];
  const started = await Promise.allSettled([
    spawnServer(tlsArgs),
    spawnServer([...tlsArgs, "--tls-client-ca", join(pki, "ca.pem")]),
  ]);
  const failed = started.find((s) => s.status === "rejected");
  if (failed !== undefined) {
    await Promise.all(started.map((s) => (s.status === "fulfilled" ? s.value.stop() : undefined)));
    rmSync(pki, { recursive: true, force: true });
    throw failed.reason;
  }
  const [tls, mtls] = started.map((s) => (s as PromiseFulfilledResult<LiveServer>).value);
  return {
    tls: tls.address,
    mtls: mtls.address,
    pki,
    keys,
    stop: async () => {
      await Promise.all([tls.stop(), mtls.stop()]);
      rmSync(pki, { recursive: true, force: true });
    },
  };
}
