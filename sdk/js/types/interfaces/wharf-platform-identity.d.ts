declare module 'wharf:platform/identity@0.1.0' {
  /**
   * The caller of this request: `none` for anonymous requests and for
   * credentials that are invalid or belong to someone outside the tenant.
   */
  export function caller(): User | undefined;
  /**
   * Whether the caller holds `permission`, a name this service declares in its
   * manifest (e.g. "addUsers", granted as "forum.addUsers"). Always false for
   * anonymous callers and for permissions the running version does not declare.
   */
  export function allowed(permission: string): boolean;
  /**
   * An authenticated member of the instance's tenant.
   */
  export interface User {
    /**
     * Stable user id.
     */
    userId: string,
    /**
     * The user's email.
     */
    email: string,
  }
}
