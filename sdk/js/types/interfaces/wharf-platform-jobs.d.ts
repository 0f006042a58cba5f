declare module 'wharf:platform/jobs@0.1.0' {
  /**
   * Queue a job of `kind` for this instance; returns its id. Payloads are at
   * most 64 KiB; a tenant holds at most its quota of pending jobs. Each call
   * is charged 200,000 fuel (0.2 ms of guest work); jobs queued by
   * concurrent requests are written together.
   */
  export function enqueue(kind: string, payload: Uint8Array, options: Options): string;
  /**
   * How to enqueue.
   */
  export interface Options {
    /**
     * The job's version: the shape of its payload. The job runs on a
     * version of the service that accepts it (the running one if it does,
     * else the one that enqueued it).
     */
    version: number,
    /**
     * Run no sooner than this many milliseconds from now.
     */
    delayMs: bigint,
    /**
     * Enqueueing the same key twice (per instance) gives one job: the
     * second call returns the first job's id.
     */
    idempotencyKey?: string,
    /**
     * Higher runs first among the instance's tenant's ready jobs.
     */
    priority: number,
    /**
     * Attempts before the job is dead (default: the node's, 5).
     */
    maxAttempts?: number,
  }
}
