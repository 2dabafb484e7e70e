/**
 * A Keyturn server this test owns: its own temp data dir, master key and free loopback
 * port, so that it can be stopped and started again on the same data and address.
 *
 * The command is KEYTURN_SERVER_CMD when set (words split on spaces; the test adds
 * --data-dir, --listen and test flags), else the repository's .venv/bin/keyturn serve,
 * else `keyturn serve` from PATH.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const READY_LINE = "listening on";
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

interface Command {
  readonly file: string;
  readonly args: readonly string[];
}

export class ServerProcess {
  private child: ChildProcess | undefined;
  private output = "";
  private readonly masterKey = randomBytes(32).toString("hex");

  private constructor(
    private readonly command: Command,
    readonly dataDir: string,
    readonly port: number,
  ) {}

  /**
   * Starts a server on a fresh data dir and a free port, and waits until it serves.
   * Another process may take the port between the probe and the bind: then try anew.
   */
  static async start(attempts = 3): Promise<ServerProcess> {
    const dataDir = mkdtempSync(join(tmpdir(), "keyturn-node-test-"));
    const server = new ServerProcess(serverCommand(), dataDir, await freePort());
    try {
      await server.launch();
      return server;
    } catch (error) {
      await server.dispose();
      if (attempts <= 1) throw error;
      return ServerProcess.start(attempts - 1);
    }
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The admin token the first start wrote to the data dir. */
  get adminToken(): string {
    return readFileSync(join(this.dataDir, "admin.token"), "utf8").trim();
  }

  /** Stops the server: SIGTERM drains it gracefully, SIGKILL is a crash. */
  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    killGroup(child, signal);
    const timer = setTimeout(() => killGroup(child, "SIGKILL"), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
    this.child = undefined;
  }

  /** Starts the server again on the same data dir, master key and port. */
  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  /** Stops the server and deletes its data dir. */
  async dispose(): Promise<void> {
    await this.stop("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  private async launch(): Promise<void> {
    this.output = "";
    const args = [
      ...this.command.args,
      "--data-dir", this.dataDir,
      "--listen", this.address,
      "--caller-rate-limit", "0",
      "--heartbeat", "1s",
    ];
    const child = spawn(this.command.file, args, {
      env: { ...process.env, MASTER_KEY: this.masterKey },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // its own process group, so that stop() reaches any children
    });
    this.child = child;
    process.once("exit", () => killGroup(child, "SIGKILL"));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`server not ready in ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      const onData = (chunk: Buffer): void => {
        this.output = (this.output + chunk.toString()).slice(-20_000);
        if (this.output.includes(READY_LINE)) {
          clearTimeout(timer);
          resolve();
        }
      };
      const fail = (error: Error): void => {
        clearTimeout(timer);
        reject(new Error(`${error.message}; server output:\n${this.output}`));
      };
      child.stdout?.on("data", onData);
      child.stderr?.on("data", onData);
      child.once("error", fail);
      child.once("exit", (code, signal) => fail(new Error(`server exited (${code ?? signal}) while starting`)));
    });
  }
}

function serverCommand(): Command {
  const configured = process.env["KEYTURN_SERVER_CMD"]?.trim();
  if (configured) {
    const [file, ...args] = configured.split(/\s+/);
    return { file: file ?? "keyturn", args };
  }
  const venv = findUp(join(".venv", "bin", "keyturn"));
  return { file: venv ?? "keyturn", args: ["serve"] };
}

/** The first `relative` path that exists in this file's folder or one of its parents. */
function findUp(relative: string): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, relative);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}
