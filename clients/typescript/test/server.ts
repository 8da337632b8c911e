// The server the tests call: VISIONSEARCH_ADDRESS when set (the pytest suite passes its own), otherwise a
// fresh `python -m server` on port 0 from the repository's .venv (VISIONSEARCH_PYTHON overrides), with its
// own data folder and no default collection; stopped by stop().
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
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

export async function liveServer(): Promise<LiveServer> {
  const given = process.env.VISIONSEARCH_ADDRESS;
  if (given) return { address: given, stop: async () => {} };

  const python = process.env.VISIONSEARCH_PYTHON ?? join(REPO_ROOT, ".venv", "bin", "python");
  const dataDir = mkdtempSync(join(tmpdir(), "visionsearch-ts-"));
  const args = ["-m", "server", "--address", "127.0.0.1:0", "--data-dir", dataDir, "--no-default-collection",
    "--no-fsync", "--log-level", "WARNING"];
  // The server reads VISIONSEARCH_* too: drop any that the caller's environment sets.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VISIONSEARCH_")));
  const child: ChildProcess = spawn(python, args, { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "inherit"] });
  const address = await new Promise<string>((ok, fail) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const m = /listening on (\S+)/.exec(line);
      if (m) ok(m[1]);
    });
    child.on("exit", (code) => fail(new Error(`server exited with ${code} before listening (${python})`)));
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
