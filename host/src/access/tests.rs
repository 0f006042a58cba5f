//! The access room against both backends, without a node.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::identity::Caller;
use crate::testdb::{control_planes, tenant_and_user};

fn caller(user_id: &str) -> Caller {
    Caller {
        user_id: user_id.into(),
        email: "x@y.test".into(),
        operator: false,
        credential: "session",
        expires_at: None,
    }
}

#[tokio::test]
async fn roles_grant_what_they_hold_and_strangers_see_no_tenant() {
    for plane in control_planes().await {
        let access = Access::new(plane.db.clone());
        let owner = tenant_and_user(&plane.db, "acme", "owner@acme.test").await;
        let member = tenant_and_user(&plane.db, "acme", "member@acme.test").await;
        let stranger = tenant_and_user(&plane.db, "globex", "eve@globex.test").await;
        access.set_member("acme", &owner, Role::Owner).await.unwrap();
        access.set_member("acme", &member, Role::Member).await.unwrap();
        let on = plane.backend;

        access.require(&caller(&owner), "acme", Platform::MembersManage).await.unwrap();
        access.require(&caller(&member), "acme", Platform::TenantRead).await.unwrap();
        assert!(
            matches!(
                access.require(&caller(&member), "acme", Platform::MembersManage).await,
                Err(AccessError::Forbidden(..))
            ),
            "{on}"
        );
        // A stranger learns nothing: the tenant does not exist for them.
        assert!(
            matches!(
                access.require(&caller(&stranger), "acme", Platform::TenantRead).await,
                Err(AccessError::NoSuchTenant(_))
            ),
            "{on}"
        );
        assert_eq!(access.visible_tenants(&caller(&member)).await.unwrap(), Some(vec!["acme".to_string()]), "{on}");
        // The last owner stays.
        assert!(matches!(access.set_member("acme", &owner, Role::Member).await, Err(AccessError::LastOwner)), "{on}");
    }
}

#[tokio::test]
async fn grants_belong_to_members_of_one_tenant_and_one_service() {
    for plane in control_planes().await {
        let access = Access::new(plane.db.clone());
        let ann = tenant_and_user(&plane.db, "acme", "ann@acme.test").await;
        let eve = tenant_and_user(&plane.db, "globex", "eve@globex.test").await;
        access.set_member("acme", &ann, Role::Member).await.unwrap();
        access.set_member("globex", &eve, Role::Owner).await.unwrap();
        let on = plane.backend;

        access.grant("acme", &ann, "ann@acme.test", "forum.addUsers").await.unwrap();
        assert!(access.holds("acme", &ann, "forum.addUsers").await.unwrap(), "{on}");
        assert_eq!(access.service_grants("acme", &ann, "forum").await.unwrap(), Some(vec!["addUsers".into()]), "{on}");
        assert_eq!(access.service_grants("acme", &ann, "tasks").await.unwrap(), Some(vec![]), "{on}");
        // Not a member: no grant, and no permissions anywhere in the tenant.
        assert!(
            matches!(
                access.grant("acme", &eve, "eve@globex.test", "forum.addUsers").await,
                Err(AccessError::NotAMember(..))
            ),
            "{on}"
        );
        assert_eq!(access.service_grants("acme", &eve, "forum").await.unwrap(), None, "{on}");
        assert!(!access.holds("globex", &ann, "forum.addUsers").await.unwrap(), "{on}");
        assert!(access.revoke("acme", &ann, "forum.addUsers").await.unwrap(), "{on}");
        assert!(!access.holds("acme", &ann, "forum.addUsers").await.unwrap(), "{on}");
    }
}
