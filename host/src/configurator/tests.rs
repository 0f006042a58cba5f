//! The configurator's tenants against both backends, without a node (a
//! registry with no versions, the node's other rooms absent).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::testdb::{control_planes, tenant_and_user};

/// A configurator over `db` with nothing published, and its data directory.
async fn configurator(db: &Db) -> (Configurator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::NodeConfig::new(dir.path());
    config.pool.max_instances = 4;
    config.trust.quotas.tenants_per_user = 2;
    let seen = Arc::new(store::Seen::new(0));
    let runtime = Arc::new(crate::runtime::Runtime::new(config.limits.clone(), &config.pool).unwrap());
    let registry = Arc::new(Registry::open(db.clone(), runtime, dir.path(), seen.clone()).await.unwrap());
    let clock = Arc::new(crate::clock::Clock::real());
    let usage = Arc::new(Usage::open(db.clone(), &dir.path().join("usage"), clock, false).unwrap());
    let threads = database::DbThreads::start(1).unwrap();
    let parts = super::Parts {
        db: db.clone(),
        registry,
        router: Arc::new(Router::default()),
        usage,
        db_threads: threads,
        backends: Default::default(),
        seen,
        followers: Default::default(),
    };
    let configurator = Configurator::new(parts, &config).unwrap();
    (configurator, dir)
}

#[tokio::test]
async fn a_user_creates_tenants_within_their_quota_and_sees_them_page_by_page() {
    for plane in control_planes().await {
        let on = plane.backend;
        let (rooms, _dir) = configurator(&plane.db).await;
        let ann = tenant_and_user(&plane.db, "existing", "ann@acme.test").await;
        let actor = Actor { user_id: &ann, operator: false };
        rooms.create_tenant("acme", Some("Acme Ltd"), actor).await.unwrap();
        assert!(matches!(rooms.create_tenant("acme", None, actor).await, Err(ConfigError::TenantExists(_))), "{on}");
        assert!(
            matches!(rooms.create_tenant("Not Valid!", None, actor).await, Err(ConfigError::InvalidTenantId(_))),
            "{on}"
        );
        rooms.create_tenant("globex", None, actor).await.unwrap();
        // The third is over the quota of 2; an operator is bound by none.
        assert!(
            matches!(rooms.create_tenant("initech", None, actor).await, Err(ConfigError::QuotaExceeded { .. })),
            "{on}"
        );
        assert_eq!(rooms.tenants_created_by(&ann).await.unwrap(), 2, "{on}");
        rooms.create_tenant("initech", None, Actor { user_id: &ann, operator: true }).await.unwrap();

        let first = rooms.tenants(None, &Page::new(None, Some(2))).await.unwrap();
        assert_eq!(first.len(), 2, "{on}");
        let rest = rooms.tenants(None, &Page::new(Some(first[1].id.clone()), Some(100))).await.unwrap();
        let mut all: Vec<String> = first.iter().chain(&rest).map(|t| t.id.clone()).collect();
        all.sort();
        assert_eq!(all, ["acme", "existing", "globex", "initech"], "{on}");
        assert_eq!(rooms.tenant("acme").await.unwrap().display_name, "Acme Ltd", "{on}");
        assert!(matches!(rooms.tenant("nobody").await, Err(ConfigError::UnknownTenant(_))), "{on}");
    }
}
