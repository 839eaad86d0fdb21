//! Every public type that can hold a secret value, a token or a credential prints a placeholder
//! through `Debug` (the types that hold one and are not listed here implement no `Debug` at all,
//! so they cannot be printed by accident). And the buffers bootsecrets' own code fills with a value
//! while transforming it are zeroed before they are freed, on the error paths too (checked by an
//! allocator that looks for the value in every freed block).

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
        role: "node".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: SecretString::new(CANARY.into()),
        session_token: SecretString::new(CANARY.into()),
        expiration: Some(SystemTime::now()),
    };
    assert_redacted("AwsCredentials", format!("{aws:?}"));

    let az = bootsecrets::identity::azure_imds::AccessToken {
        token: SecretString::new(CANARY.into()),
        expires_on: None,
        client_id: Some("00000000-0000-0000-0000-000000000001".into()),
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

/// A global allocator that, while a test watches for a byte string on its own thread, looks for
/// that string in every block freed on that thread. A reallocation is treated as a move (a new
/// block, then the old one freed), whether or not the system allocator could grow it in place:
/// code that must not leave copies behind must not reallocate a buffer once it holds them.
mod freed {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static NEEDLE: Cell<Option<&'static [u8]>> = const { Cell::new(None) };
        static HITS: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Scanning;

    fn watching() -> bool {
        NEEDLE.try_with(|n| n.get().is_some()).unwrap_or(false)
    }

    fn scan(ptr: *const u8, size: usize) {
        let _ = NEEDLE.try_with(|n| {
            if let Some(needle) = n.get() {
                // SAFETY: the block is live until it is handed back below; its bytes are only
                // compared, never kept.
                let block = unsafe { std::slice::from_raw_parts(ptr, size) };
                if block.windows(needle.len()).any(|w| w == needle) {
                    HITS.with(|h| h.set(h.get() + 1));
                }
            }
        });
    }

    unsafe impl GlobalAlloc for Scanning {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            scan(ptr, layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !watching() {
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }

    /// Runs `f`; returns its result and how many blocks freed meanwhile (on this thread) still
    /// held `needle`.
    pub fn holding<R>(needle: &'static [u8], f: impl FnOnce() -> R) -> (R, usize) {
        HITS.with(|h| h.set(0));
        NEEDLE.with(|n| n.set(Some(needle)));
        let r = f();
        NEEDLE.with(|n| n.set(None));
        (r, HITS.with(|h| h.get()))
    }
}

#[global_allocator]
static ALLOC: freed::Scanning = freed::Scanning;

/// A `Secret` built without a reallocation, so that the test itself leaves no copy behind.
fn secret_of(parts: &[&[u8]]) -> Secret {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    Secret::new(v)
}

#[test]
fn base64_decoding_frees_no_copy_of_the_value() {
    use base64::Engine;
    // 33 + 30 bytes: 84 symbols, no padding, so that copies of it can be concatenated.
    const VALUE: &[u8] = b"canary-b64-decoded-value-71c3a9e0";
    let encoded = base64::engine::general_purpose::STANDARD.encode([VALUE, &[0u8; 30]].concat());

    // Invalid in the last group: the valid prefix, which holds the value, is decoded first.
    let bad = secret_of(&[encoded.as_bytes(), b"!AAA"]);
    let (r, hits) = freed::holding(VALUE, || bootsecrets::extract::base64_decode(&bad).err());
    assert!(r.is_some(), "the input is not valid base64");
    assert_eq!(
        hits, 0,
        "a freed buffer held the decoded value (error path)"
    );

    let good = secret_of(&[encoded.as_bytes()]);
    let (r, hits) = freed::holding(VALUE, || {
        bootsecrets::extract::base64_decode(&good).map(|v| v.len())
    });
    assert_eq!(r, Ok(63));
    assert_eq!(hits, 0, "a freed buffer held the decoded value");

    // PEM-style line breaks: the compacted copy of the encoded text is not reallocated either.
    let text: &'static [u8] = Box::leak(encoded.clone().into_bytes().into_boxed_slice());
    let mut lines = Vec::new();
    for _ in 0..8 {
        for chunk in text.chunks(16) {
            lines.push(chunk);
            lines.push(b"\n".as_slice());
        }
    }
    let wrapped = secret_of(&lines);
    let (r, hits) = freed::holding(&text[..16], || {
        bootsecrets::extract::base64_decode(&wrapped).map(|v| v.len())
    });
    assert_eq!(r, Ok(8 * 63));
    assert_eq!(hits, 0, "a freed buffer held the encoded value");
}

#[test]
fn json_string_unescaping_frees_no_copy_of_the_value() {
    const VALUE: &[u8] = b"canary-unescaped-4be2d07f";
    // A lone surrogate after the value: unescaping gives up midway.
    let doc = secret_of(&[b"{\"k\":\"", VALUE, b"\\ud800\"}"]);
    let (r, hits) = freed::holding(VALUE, || bootsecrets::extract::json_key(&doc, "k").err());
    assert!(
        r.as_deref()
            .is_some_and(|e| e.contains("invalid string escape")),
        "{r:?}"
    );
    assert_eq!(
        hits, 0,
        "a freed buffer held the unescaped value (error path)"
    );

    let doc = secret_of(&[b"{\"k\":\"", VALUE, b"\\n\"}"]);
    let (r, hits) = freed::holding(VALUE, || {
        bootsecrets::extract::json_key(&doc, "k").map(|v| v.len())
    });
    assert_eq!(r, Ok(VALUE.len() + 1));
    assert_eq!(hits, 0, "a freed buffer held the unescaped value");
}
