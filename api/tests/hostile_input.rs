//! The API's own parsers of outside input — bearer tokens and the card issuer's webhook
//! signature — fed what an attacker could send: refused, never a panic. Numbers go to
//! their extremes, where arithmetic on them overflows.

use proptest::prelude::*;
use shopagent::auth::{Authenticator, Claims, Role};
use shopagent::routes::webhooks::verify_stripe_signature;

const NOW: i64 = 1_790_000_000;

fn any_number() -> impl Strategy<Value = i64> {
    prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), any::<i64>()]
}

proptest! {
    #[test]
    fn a_stripe_signature_of_any_shape_is_refused_without_a_panic(
        t in any_number(),
        v1 in "[0-9a-f]{0,64}",
        raw in ".{0,120}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let header = format!("t={t},v1={v1}");
        prop_assert!(verify_stripe_signature(b"whsec_test", &header, &body, NOW).is_err());
        prop_assert!(verify_stripe_signature(b"whsec_test", &raw, &body, NOW).is_err());
    }

    #[test]
    fn a_bearer_token_of_any_shape_is_refused_without_a_panic(
        token in ".{0,300}",
        parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5),
        exp in any_number(),
        iat in any_number(),
        role in prop_oneof![Just(Role::Shopper), Just(Role::Agent), Just(Role::Admin)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let auth = Authenticator::new(Some(b"secret"), None);
        runtime.block_on(async {
            prop_assert!(auth.verify(&token).await.is_err());
            prop_assert!(auth.verify(&parts.join(".")).await.is_err());
            // Well signed, with times at the ends of the range: read, or refused.
            let claims = Claims { sub: "alice".into(), tenant: "acme".into(), role, mandate: None, exp, iat };
            if let Ok(signed) = auth.issue(&claims) {
                let verdict = auth.verify(&signed).await;
                prop_assert!(verdict.is_err() || exp > NOW, "an expired token is refused");
            }
            Ok(())
        })?;
    }
}
