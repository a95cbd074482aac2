// Starts the real presence-node binary for the SDK's tests: a temporary data folder, free
// loopback ports, fast settings; and the admin calls the tests need.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** The binary: $PRESENCE_NODE_BIN, else the Cargo target folder's debug build. */
export function nodeBin() {
  if (process.env.PRESENCE_NODE_BIN) return process.env.PRESENCE_NODE_BIN;
  const target = path.resolve(repo, process.env.CARGO_TARGET_DIR ?? "target");
  return path.join(target, "debug", "presence-node");
}

export const haveNode = existsSync(nodeBin());

/** The repository's root. */
export const repoRoot = repo;

export const FAST = ["--tick", "50ms", "--grace", "1s", "--heartbeat-timeout", "6s", "--lp-hold", "2s"];

/** Waits until `pred()` is truthy (polled every 20 ms); throws after `ms`. */
export async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export class TestNode {
  /** Starts a node on `dir` (a fresh one by default), its client port at `ws` (any); `fast`
   * replaces the fast timing flags. */
  static async start({ dir, ws = "127.0.0.1:0", args = [], fast = FAST } = {}) {
    const n = new TestNode();
    n.owned = !dir;
    n.dir = dir ?? mkdtempSync(path.join(tmpdir(), "presence-js-"));
    rmSync(path.join(n.dir, "ready.json"), { force: true });
    n.proc = spawn(
      nodeBin(),
      ["serve", "--data-dir", n.dir, "--ws-listen", ws, "--quic-listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", ...fast, ...args],
      { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
    );
    n.exited = new Promise((r) => n.proc.once("exit", r));
    n.ready = await until(() => {
      try {
        return JSON.parse(readFileSync(path.join(n.dir, "ready.json"), "utf8"));
      } catch {
        return undefined;
      }
    }, 30_000, "ready.json");
    n.key = readFileSync(path.join(n.dir, "admin_key"), "utf8").trim();
    return n;
  }

  async admin(method, p, body) {
    const r = await fetch(`http://${this.ready.admin}${p}`, {
      method,
      headers: { authorization: `Bearer ${this.key}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }

  async token(user) {
    const r = await this.admin("POST", "/v1/tokens", { user });
    if (r.status !== 200) throw new Error(`token: ${r.status}`);
    return r.body.token;
  }

  async befriend(pairs) {
    const r = await this.admin("POST", "/v1/friendships", { add: pairs });
    if (r.status !== 200) throw new Error(`friendships: ${r.status}`);
  }

  /** Creates (or replaces) a group with these members. */
  async group(gid, members) {
    const r = await this.admin("PUT", `/v1/groups/${gid}`, { members });
    if (r.status !== 204) throw new Error(`group: ${r.status}`);
  }

  /** SIGTERM, and waits for the exit (at most 15 s). */
  async stop() {
    this.proc.kill("SIGTERM");
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 15_000);
    await this.exited;
    clearTimeout(t);
  }

  async dispose() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) await this.stop();
    if (this.owned) rmSync(this.dir, { recursive: true, force: true });
  }
}
