//! The identity room against both backends, without a node.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use super::*;
use crate::config::TrustConfig;
use crate::testdb::control_planes;

fn open_registration() -> TrustConfig {
    TrustConfig { registration: Registration::Open, ..Default::default() }
}

#[tokio::test]
async fn a_session_opens_resolves_and_ends_and_an_address_registers_once() {
    for plane in control_planes().await {
        let identity = Identity::new(plane.db.clone(), &open_registration(), None);
        let on = plane.backend;
        let (user, _) = identity.register("Ann@Example.test", "correct horse battery", None, false).await.unwrap();
        assert_eq!(user.email, "ann@example.test", "{on}");
        assert!(!user.email_verified, "open registration proves nothing: {on}");
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let session = identity.login("ann@example.test", "correct horse battery", client).await.unwrap();
        let caller = identity.authenticate(&session.token).await.unwrap().expect("the session resolves");
        assert_eq!((caller.email.as_str(), caller.credential), ("ann@example.test", "session"), "{on}");
        assert!(identity.logout(&session.token).await.unwrap(), "{on}");
        assert!(
            identity.authenticate(&session.token).await.unwrap().is_none(),
            "an ended session resolves to nobody: {on}"
        );
        assert!(identity.authenticate("whs_madeup").await.unwrap().is_none(), "{on}");
        assert!(matches!(
            identity.register("ann@example.test", "another password", None, false).await,
            Err(IdentityError::EmailTaken)
        ));
    }
}

#[tokio::test]
async fn guesses_are_limited_per_account_and_an_overlong_password_counts_as_one() {
    for plane in control_planes().await {
        let identity = Identity::new(plane.db.clone(), &open_registration(), None);
        let on = plane.backend;
        identity.register("bob@example.test", "correct horse battery", None, false).await.unwrap();
        let client: IpAddr = "10.9.9.9".parse().unwrap();
        let long = "p".repeat(2000);
        for i in 0..5 {
            let password = if i % 2 == 0 { long.as_str() } else { "wrong password!" };
            let refused = identity.login("bob@example.test", password, client).await;
            assert!(matches!(refused, Err(IdentityError::BadCredentials | IdentityError::OverlongPassword)), "{on}");
        }
        // Five attempts from a stranger's address: the account is locked for strangers.
        assert!(
            matches!(
                identity.login("bob@example.test", "correct horse battery", client).await,
                Err(IdentityError::RateLimited(_))
            ),
            "{on}"
        );
        assert_eq!(identity.counters.invalid.load(Ordering::Relaxed), 3, "the overlong ones: {on}");
    }
}
