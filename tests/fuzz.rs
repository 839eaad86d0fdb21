//! Property-based fuzzing of everything that reads untrusted input before a secret is written:
//! the manifest parser and validator, path and mode parsing, JSON key extraction and base64
//! decoding. No input may panic or hang; every rejection is a message; a message never quotes a
//! value; and what validation accepts is safe.
//!
//! The test command runs a short campaign (proptest's default of 256 cases per property). A long
//! run, documented in docs/reliability.md:
//!
//!     PROPTEST_CASES=100000 cargo test --release --test fuzz
//!
//! A failure prints the minimal input and is recorded in `tests/fuzz.proptest-regressions`, which
//! is committed and replayed first on every later run.

use bootsecrets::extract;
use bootsecrets::extract::Encoding;
use bootsecrets::names::RelPath;
use bootsecrets::plan::{Plan, parse_mode};
use bootsecrets::secret::Secret;
use proptest::prelude::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Values that have broken parsers elsewhere: empty, traversal, absolute, huge, odd unicode.
fn nasty_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"..\"".to_string()),
        Just("\"../../etc/shadow\"".to_string()),
        Just("\"/etc/passwd\"".to_string()),
        Just("\"a//b\"".to_string()),
        Just("\"..data\"".to_string()),
        Just("\".status.json\"".to_string()),
        Just("\"0777\"".to_string()),
        Just("\"4755\"".to_string()),
        Just("\"http://169.254.169.254\"".to_string()),
        Just("\"https://vault.example.com/v1/x\"".to_string()),
        Just("18446744073709551615".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[\"/bin/true\"]".to_string()),
        Just("{}".to_string()),
        "\"[\\PC]{0,40}\"".prop_map(|s| s),
        any::<i64>().prop_map(|i| i.to_string()),
        "[a-z0-9/._-]{0,30}".prop_map(|s| format!("\"{s}\"")),
    ]
}

const SETTINGS: &[&str] = &[
    "layout",
    "output_root",
    "root_owner",
    "root_group",
    "deadline_seconds",
    "concurrency",
    "max_secret_bytes",
    "max_response_bytes",
    "default_mode",
    "default_owner",
    "default_group",
    "bogus",
];
const BACKEND: &[&str] = &[
    "region",
    "endpoint",
    "imds_endpoint",
    "imds_endpoint_mode",
    "use_fips",
    "timeout_seconds",
    "allow_http",
    "address",
    "namespace",
    "ca_file",
    "tls_server_name",
    "revoke_token",
    "vault_url",
    "vault_address",
    "ca_bundle",
    "resource",
    "client_id",
    "object_id",
    "resource_id",
    "project",
    "location",
    "metadata_endpoint",
    "service_account",
    "bogus",
];
const AUTH: &[&str] = &[
    "token_file",
    "mount",
    "role_id",
    "role_id_file",
    "secret_id_file",
    "secret_id_wrapped",
    "role",
    "jwt_file",
    "server_id",
    "sts_endpoint",
    "sts_region",
    "resource",
    "client_id",
    "metadata_endpoint",
    "service_account",
    "bogus",
];
const SECRET: &[&str] = &[
    "path",
    "backend",
    "ref",
    "version_id",
    "version_stage",
    "version",
    "field",
    "mount",
    "kv_version",
    "json_key",
    "encoding",
    "mode",
    "owner",
    "group",
    "on_change",
    "bogus",
];

fn table(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), nasty_value()), 0..6).prop_map(|kv| {
        let mut seen = std::collections::BTreeSet::new();
        kv.into_iter()
            .filter(|(k, _)| seen.insert(*k))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

/// Manifests that are mostly well-formed TOML with known keys, so the validator (not only the
/// TOML parser) sees the nasty values.
fn manifest() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec!["aws", "vault", "azure", "gcp", "nope"]);
    let method = prop::sample::select(vec![
        "token",
        "approle",
        "jwt",
        "kubernetes",
        "aws",
        "azure",
        "gcp",
        "nope",
    ]);
    (
        table(SETTINGS),
        kind,
        table(BACKEND),
        method,
        table(AUTH),
        prop::collection::vec(table(SECRET), 0..4),
    )
        .prop_map(|(settings, kind, backend, method, auth, secrets)| {
            let mut m = format!(
                "[settings]\n{settings}\n[backend.b]\ntype = \"{kind}\"\n{backend}\n[backend.b.auth]\nmethod = \"{method}\"\n{auth}\n"
            );
            for s in secrets {
                m += &format!("[[secret]]\n{s}\n");
            }
            m
        })
}

fn validate(text: &str) {
    match bootsecrets::manifest::parse(text) {
        Err(e) => assert!(!e.to_string().trim().is_empty()),
        Ok(m) => match Plan::build(&m, &no_env) {
            Err(e) => assert!(!format!("{e:#}").trim().is_empty()),
            Ok(plan) => {
                // Whatever validation accepts is safe to write.
                for s in &plan.secrets {
                    let comps = s.path.components();
                    assert!(!comps.is_empty());
                    assert!(comps.iter().all(|c| !c.is_empty()
                        && c != "."
                        && !c.starts_with("..")
                        && !c.contains('/')));
                    assert_eq!(s.mode & 0o7007, 0, "mode {:o}", s.mode);
                }
                assert!(plan.output_root.is_absolute());
            }
        },
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_manifest_parser(text in "\\PC{0,400}") {
        validate(&text);
    }

    #[test]
    fn structured_manifests_are_validated_or_rejected_with_a_message(text in manifest()) {
        validate(&text);
    }

    #[test]
    fn relative_paths_are_either_safe_or_rejected(s in "[a-z./_\\-]{0,24}") {
        if let Ok(p) = RelPath::parse(&s) {
            prop_assert!(!s.starts_with('/'));
            prop_assert!(p.components().iter().all(|c| c != ".." && c != "." && !c.is_empty()));
        }
    }

    #[test]
    fn accepted_modes_never_open_a_file_to_others(s in "(0o)?[0-7]{0,5}") {
        if let Ok(m) = parse_mode(&s) {
            prop_assert_eq!(m & 0o7007, 0);
            prop_assert!(m & 0o400 != 0);
        }
    }

    /// JSON extraction and base64 decoding: no panic, and an error never quotes the value (every
    /// generated value carries a marker that must not reach the message).
    #[test]
    fn extraction_never_panics_or_quotes_the_value(
        body in "\\PC{0,80}",
        key in "[a-z]{0,6}",
        json in any::<bool>(),
        b64 in any::<bool>(),
    ) {
        let value = if json {
            format!("{{\"{key}\": \"ZQXmarker{body}\", \"n\": 1}}")
        } else {
            format!("ZQXmarker{body}")
        };
        let encoding = if b64 { Encoding::Base64 } else { Encoding::None };
        let k = if key.is_empty() { None } else { Some(key.as_str()) };
        if let Err(e) = extract::transform(Secret::new(value.into_bytes()), k, encoding) {
            prop_assert!(!e.contains("ZQX"), "message quotes the value: {}", e);
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_extraction(bytes in prop::collection::vec(any::<u8>(), 0..200), key in "[a-z]{1,4}") {
        let _ = extract::json_key(&Secret::new(bytes.clone()), &key);
        let _ = extract::base64_decode(&Secret::new(bytes));
    }
}
