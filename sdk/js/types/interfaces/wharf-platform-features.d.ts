declare module 'wharf:platform/features@0.1.0' {
  /**
   * Ids of the modules this instance has enabled (checked against the
   * manifest when they were enabled).
   */
  export function enabledModules(): Array<string>;
  /**
   * Whether module `id` is enabled.
   */
  export function isEnabled(id: string): boolean;
  /**
   * One setting, if the tenant set it (e.g. "site-name", "language").
   */
  export function setting(key: string): string | undefined;
  /**
   * Every setting, sorted by key.
   */
  export function settings(): Array<[string, string]>;
}
