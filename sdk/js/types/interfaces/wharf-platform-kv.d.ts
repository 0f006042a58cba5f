declare module 'wharf:platform/kv@0.1.0' {
  /**
   * The value of `key`, unless absent or expired.
   */
  export function get(key: string): Uint8Array | undefined;
  /**
   * Set `key`; with `ttl-seconds` it expires after that long.
   */
  export function set(key: string, value: Uint8Array, ttlSeconds: bigint | undefined): void;
  /**
   * Delete `key`; whether it existed.
   */
  export { _delete as delete };
  function _delete(key: string): boolean;
  /**
   * Keys starting with `prefix`, sorted, at most `limit` (≤ 1000).
   */
  export function listKeys(prefix: string, limit: number): Array<string>;
  /**
   * Add `delta` to the integer at `key` (0 if absent) and return the result.
   */
  export function increment(key: string, delta: bigint): bigint;
}
