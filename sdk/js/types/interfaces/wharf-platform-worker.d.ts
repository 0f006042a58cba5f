declare module 'wharf:platform/worker@0.1.0' {
  /**
   * Run `job`. An error (or a trap, or running out of time or fuel) fails
   * this attempt: it is retried with exponential backoff, then dead.
   */
  export function run(job: Job): void;
  /**
   * Fill a new instance's database, once, after its first migrations (its
   * settings are readable through `features`). An error fails the setup.
   */
  export function seed(): void;
  /**
   * One job to run.
   */
  export interface Job {
    id: string,
    kind: string,
    /**
     * The job version it was enqueued with: switch on it.
     */
    version: number,
    payload: Uint8Array,
    /**
     * 1 on the first run; retries after failures count up.
     */
    attempt: number,
    /**
     * The service version that enqueued it.
     */
    enqueuedBy: string,
  }
}
