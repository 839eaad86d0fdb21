//! Every public type that can hold a secret value, a token or a credential prints a placeholder
//! through `Debug` (the types that hold one and are not listed here implement no `Debug` at all,
//! so they cannot be printed by accident).

use bootsecrets::secret::{Secret, SecretString};
use std::time::SystemTime;

const CANARY: &str = "canary-4f1d9c2e7b";

fn assert_redacted(what: &str, text: String) {
    assert!(!text.contains(CANARY), "{what} printed the value: {text}");
    assert!(
        !text.contains("4f1d9c2e7b"),
        "{what} printed part of the value: {text}"
    );
    assert!(
        text.contains("REDACTED"),
        "{what} printed no placeholder: {text}"
    );
}

#[test]
fn values_tokens_and_credentials_print_a_placeholder() {
    let s = Secret::new(CANARY.as_bytes().to_vec());
    assert_redacted("Secret", format!("{s:?}"));
    assert_redacted("Secret (pretty)", format!("{s:#?}"));
    let t = SecretString::new(CANARY.to_string());
    assert_redacted("SecretString", format!("{t:?}"));
    assert_redacted("Option<SecretString>", format!("{:?}", Some(&t)));

    let aws = bootsecrets::identity::aws_imds::AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SecretString::new(CANARY.into()),
        session_token: SecretString::new(CANARY.into()),
        expiration: Some(SystemTime::now()),
    };
    assert_redacted("AwsCredentials", format!("{aws:?}"));

    let az = bootsecrets::identity::azure_imds::AccessToken {
        token: SecretString::new(CANARY.into()),
        expires_on: None,
    };
    assert_redacted("azure_imds::AccessToken", format!("{az:?}"));

    let gce = bootsecrets::identity::gce_metadata::AccessToken {
        token: SecretString::new(CANARY.into()),
        expires_at: None,
    };
    assert_redacted("gce_metadata::AccessToken", format!("{gce:?}"));
}

#[test]
fn a_value_survives_its_own_debug_but_not_as_text() {
    // The value is still there for the writer; only its printing is redacted.
    let s = Secret::new(CANARY.as_bytes().to_vec());
    assert_eq!(s.expose(), CANARY.as_bytes());
    let t = SecretString::new(CANARY.to_string());
    assert_eq!(t.expose(), CANARY);
}
