//! Billing's accounts, spending limits, suspensions and discounts against both
//! backends, without a node (a registry with nothing published).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::testdb::{control_planes, tenant_and_user};

/// Billing over `db` with nothing published, and its data directory.
async fn billing(db: &Db) -> (Billing, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::NodeConfig::new(dir.path());
    config.pool.max_instances = 4;
    let seen = Arc::new(store::Seen::new(0));
    let runtime = Arc::new(crate::runtime::Runtime::new(config.limits.clone(), &config.pool).unwrap());
    let registry = Arc::new(Registry::open(db.clone(), runtime, dir.path(), seen).await.unwrap());
    (Billing::new(db.clone(), Arc::new(Clock::settable()), registry), dir)
}

fn percent(p: &str) -> NewDiscount {
    NewDiscount {
        tenant: Some("acme".into()),
        service: None,
        percent: Some(serde_json::json!(p)),
        amount: None,
        currency: None,
        starts_at: None,
        ends_at: None,
        description: Some("loyalty".into()),
    }
}

#[tokio::test]
async fn an_account_keeps_its_details_and_limit_and_refuses_bad_ones() {
    for plane in control_planes().await {
        let (billing, _dir) = billing(&plane.db).await;
        tenant_and_user(&plane.db, "acme", "owner@acme.test").await;
        let fresh = billing.account("acme").await.unwrap();
        assert_eq!((fresh.spending_limit, fresh.suspended), (None, None), "{}", plane.backend);
        let details = Details {
            name: "Acme Ltd".into(),
            address: "1 Quay".into(),
            tax_id: "GB1".into(),
            email: "ap@acme.test".into(),
        };
        let account = billing.set_details("acme", details).await.unwrap();
        assert_eq!(account.details.name, "Acme Ltd", "{}", plane.backend);
        for (amount, currency) in [(5000, "usd"), (5000, "DOLLARS"), (-1, "USD"), (MAX_PRICE + 1, "USD")] {
            let refused = billing.set_limit("acme", Some((amount, currency.into()))).await;
            assert!(matches!(refused, Err(BillingError::InvalidLimit(_))), "{}: {amount} {currency}", plane.backend);
        }
        let account = billing.set_limit("acme", Some((5000, "USD".into()))).await.unwrap();
        assert_eq!((account.spending_limit, account.limit_currency.as_deref()), (Some(5000), Some("USD")));
        assert_eq!(account.details.name, "Acme Ltd", "{}: the limit kept the details", plane.backend);
        assert_eq!(billing.limited_tenants().await.unwrap(), vec![("acme".into(), 5000, "USD".into(), None)]);
        billing.set_limit("acme", None).await.unwrap();
        assert!(billing.limited_tenants().await.unwrap().is_empty(), "{}", plane.backend);
    }
}

#[tokio::test]
async fn a_suspension_is_a_change_only_when_it_changes_something() {
    for plane in control_planes().await {
        let (billing, _dir) = billing(&plane.db).await;
        tenant_and_user(&plane.db, "acme", "owner@acme.test").await;
        billing.set_limit("acme", Some((100, "EUR".into()))).await.unwrap();
        let suspended = billing.set_suspended("acme", Some("the spending limit was reached")).await.unwrap();
        let first = suspended.expect("suspending is a change");
        assert_eq!(billing.set_suspended("acme", Some("the spending limit was reached")).await.unwrap(), None);
        let account = billing.account("acme").await.unwrap();
        assert_eq!(account.suspended.as_deref(), Some("the spending limit was reached"), "{}", plane.backend);
        let lifted = billing.set_suspended("acme", None).await.unwrap().expect("lifting is a change");
        assert!(lifted > first, "{}: generations only grow", plane.backend);
        assert_eq!(billing.set_suspended("acme", None).await.unwrap(), None, "{}", plane.backend);
        assert_eq!(billing.account("acme").await.unwrap().suspended, None, "{}", plane.backend);
        // A tenant without an account has nothing to suspend.
        assert_eq!(billing.set_suspended("nobody", Some("x")).await.unwrap(), None, "{}", plane.backend);
    }
}

#[tokio::test]
async fn discounts_are_checked_listed_and_removed() {
    for plane in control_planes().await {
        let (billing, _dir) = billing(&plane.db).await;
        tenant_and_user(&plane.db, "acme", "owner@acme.test").await;
        let refusals = [
            NewDiscount { amount: Some(500), ..percent("10") },
            NewDiscount { percent: None, ..percent("10") },
            NewDiscount { percent: None, amount: Some(500), ..percent("10") },
            NewDiscount { currency: Some("EUR".into()), ..percent("10") },
            percent("150"),
            percent("0"),
            percent("12.345"),
            NewDiscount { tenant: None, ..percent("10") },
            NewDiscount { ends_at: Some(serde_json::json!(1)), starts_at: Some(serde_json::json!(2)), ..percent("10") },
            NewDiscount { description: Some("x".repeat(201)), ..percent("10") },
        ];
        for (i, refused) in refusals.into_iter().enumerate() {
            let answer = billing.add_discount(refused, "op").await;
            assert!(
                matches!(answer, Err(BillingError::InvalidDiscount(_))),
                "{}: refusal {i}: {answer:?}",
                plane.backend
            );
        }
        let unknown = billing.add_discount(NewDiscount { service: Some("nope".into()), ..percent("10") }, "op").await;
        assert!(matches!(unknown, Err(BillingError::UnknownService(_))), "{}", plane.backend);
        let share = billing.add_discount(percent("12.5"), "op").await.unwrap();
        assert_eq!(share.basis_points, Some(1250), "{}", plane.backend);
        let fixed = NewDiscount { percent: None, amount: Some(500), currency: Some("EUR".into()), ..percent("") };
        let fixed = billing.add_discount(fixed, "op").await.unwrap();
        let mut listed = billing.discounts(Some("acme")).await.unwrap();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut expected = vec![share.clone(), fixed.clone()];
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(listed, expected, "{}", plane.backend);
        assert!(billing.discounts(Some("other")).await.unwrap().is_empty(), "{}", plane.backend);
        billing.remove_discount(&share.id).await.unwrap();
        assert_eq!(billing.discounts(None).await.unwrap(), vec![fixed], "{}", plane.backend);
        let again = billing.remove_discount(&share.id).await;
        assert!(matches!(again, Err(BillingError::UnknownDiscount(_))), "{}", plane.backend);
    }
}
