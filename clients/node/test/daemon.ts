// Starts a real `laneguard serve` (env LANEGUARD_BIN) for the tests and stops it afterwards.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export const laneguardBin: string | undefined = process.env.LANEGUARD_BIN || undefined;

export interface Daemon {
  /** http://127.0.0.1:PORT of the TCP listener. */
  url: string;
  /** The Unix socket's path when one was asked for. */
  socketPath: string | undefined;
  stderr: () => string;
  /** Sends `sig` to the daemon (SIGTERM starts its drain). */
  kill: (sig: NodeJS.Signals) => void;
  stop: () => Promise<void>;
}

const kReadyTimeoutMs = 15_000;
const kKillGraceMs = 5_000;

export async function startDaemon(
  config: Record<string, unknown>,
  { unixSocket = false, extraArgs = [] as string[] } = {},
): Promise<Daemon> {
  if (laneguardBin === undefined) throw new Error("LANEGUARD_BIN is not set");
  const dir = mkdtempSync(path.join(tmpdir(), "laneguard-node-"));
  const configPath = path.join(dir, "config.json");
  writeFileSync(configPath, JSON.stringify(config));
  const socketPath = unixSocket ? path.join(dir, "s.sock") : undefined;
  const args = ["serve", "--config", configPath, "--listen", "127.0.0.1:0", ...extraArgs];
  if (socketPath !== undefined) args.push("--listen", `unix:${socketPath}`);
  const child = spawn(laneguardBin, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const url = await new Promise<string>((resolve, reject) => {
    let found: string | undefined;
    const timer = setTimeout(
      () => fail(new Error(`no "laneguard serve: ready" within ${kReadyTimeoutMs} ms`)),
      kReadyTimeoutMs,
    );
    function fail(error: Error): void {
      clearTimeout(timer);
      child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      reject(new Error(`${error.message}; stderr:\n${stderr}`));
    }
    child.once("error", fail);
    const onEarlyExit = (code: number | null, sig: NodeJS.Signals | null): void =>
      fail(new Error(`laneguard serve exited (${code ?? sig})`));
    child.once("exit", onEarlyExit);
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      stderr += chunk;
      found ??= /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)?.[1];
      if (/^laneguard serve: ready$/m.test(stderr)) {
        clearTimeout(timer);
        child.off("exit", onEarlyExit);
        if (found === undefined) fail(new Error("ready, but no listening line with the port"));
        else resolve(found);
      }
    });
  });

  return {
    url,
    socketPath,
    stderr: () => stderr,
    kill: (sig) => void child.kill(sig),
    stop: async () => {
      await stopChild(child, exited);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const killed = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve();
    }, kKillGraceMs);
  });
  await Promise.race([exited, killed]);
  clearTimeout(timer);
  await exited;
}

/** Polls `probe` until it returns true or `timeoutMs` passes (then throws with `what`). */
export async function waitFor(
  what: string,
  probe: () => Promise<boolean> | boolean,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
