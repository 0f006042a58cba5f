/// <reference path="./interfaces/wharf-platform-features.d.ts" />
/// <reference path="./interfaces/wharf-platform-identity.d.ts" />
/// <reference path="./interfaces/wharf-platform-jobs.d.ts" />
/// <reference path="./interfaces/wharf-platform-kv.d.ts" />
/// <reference path="./interfaces/wharf-platform-sql.d.ts" />
/// <reference path="./interfaces/wharf-platform-worker.d.ts" />
declare module 'wharf:platform/worker-service@0.1.0' {
  export type * as WharfPlatformFeatures010 from 'wharf:platform/features@0.1.0'; // import wharf:platform/features@0.1.0
  export type * as WharfPlatformIdentity010 from 'wharf:platform/identity@0.1.0'; // import wharf:platform/identity@0.1.0
  export type * as WharfPlatformJobs010 from 'wharf:platform/jobs@0.1.0'; // import wharf:platform/jobs@0.1.0
  export type * as WharfPlatformKv010 from 'wharf:platform/kv@0.1.0'; // import wharf:platform/kv@0.1.0
  export type * as WharfPlatformSql010 from 'wharf:platform/sql@0.1.0'; // import wharf:platform/sql@0.1.0
  export * as worker from 'wharf:platform/worker@0.1.0'; // export wharf:platform/worker@0.1.0
}
