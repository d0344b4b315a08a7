import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

/** A call from the benchmark driver to a load agent. */
export interface RpcRequest {
  id: number;
  method: string;
  params: unknown;
}

/** An agent's reply to one call: `result` on success, `error` otherwise. */
export interface RpcResponse {
  id: number;
  result?: unknown;
  error?: string;
}

const AGENT_SCRIPT = fileURLToPath(new URL("./agent.ts", import.meta.url));

/**
 * A load generator in a child process of its own, so that its clients
 * share neither the event loop nor the CPU accounting of the driver or
 * the servers under test. Its methods are in `agent.ts`.
 */
export class LoadAgent {
  private readonly child: ChildProcess;
  private readonly pending = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void }
  >();
  private nextId = 1;
  private readonly exited: Promise<void>;
  /** Exit code or signal of the process, once it has ended. */
  private exitStatus: string | undefined;

  constructor(readonly name: string) {
    this.child = fork(AGENT_SCRIPT, [], {
      execArgv: ["--import", "tsx", "--max-old-space-size=4096"],
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exitStatus = `code ${code}, signal ${signal}`;
        for (const { reject } of this.pending.values()) {
          reject(
            new Error(
              `load agent ${name} exited (code ${code}, signal ${signal}) during a call`,
            ),
          );
        }
        this.pending.clear();
        resolve();
      });
    });
    // A send after the process has exited fails here and in call().
    this.child.on("error", (error) => {
      console.error(`load agent ${name}: ${error.message}`);
    });
    this.child.on("message", (response: RpcResponse) => {
      const call = this.pending.get(response.id);
      if (call === undefined) return;
      this.pending.delete(response.id);
      if (response.error !== undefined) {
        call.reject(new Error(`load agent ${name}: ${response.error}`));
      } else {
        call.resolve(response.result);
      }
    });
  }

  /** PID of the agent process, for reading its CPU time. */
  get pid(): number {
    return this.child.pid!;
  }

  /** Calls `method` in the agent and resolves with its result. */
  call<T>(method: string, params: unknown = {}): Promise<T> {
    if (this.exitStatus !== undefined || !this.child.connected) {
      return Promise.reject(
        new Error(
          `load agent ${this.name} cannot take ${method}: it has exited (${this.exitStatus ?? "channel closed"})`,
        ),
      );
    }
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, {
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      this.child.send({ id, method, params } satisfies RpcRequest);
    });
  }

  /** Resolves once the agent process has started and replies to calls. */
  async ready(): Promise<void> {
    await this.call("ping");
  }

  /** Ends the agent: it closes its clients when its IPC channel closes. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.disconnect();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}
