//! bootsecrets: fetch a node's secrets at boot with its cloud instance identity and write them
//! atomically to a tmpfs, before kubelet starts. See docs/design.md for the data flow.

pub mod accounts;
pub mod backend;
pub mod cli;
pub mod credfile;
pub mod doctor;
pub mod error;
pub mod extract;
pub mod governor;
#[cfg(any(feature = "azure", feature = "gcp", feature = "vault"))]
pub mod http;
pub mod hygiene;
pub mod identity;
pub mod logging;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod render;
pub mod retry;
pub mod runner;
pub mod secret;
pub mod settings;
pub mod status;
pub mod template;
pub mod units;
pub mod varlink;
pub mod writer;
pub mod x509;
