//! Identity sources: how a node proves who it is, one module per source.
//!
//! An identity source turns what the instance already has (its metadata service) into credentials
//! a backend can use. Backends own their identity: the AWS backend uses [`aws_imds`]. Every
//! credential and token lives in a [`crate::secret::SecretString`] and is never logged.

#[cfg(any(feature = "aws", feature = "vault"))]
pub mod aws_imds;
#[cfg(any(feature = "azure", feature = "vault"))]
pub mod azure_imds;
#[cfg(any(feature = "gcp", feature = "vault"))]
pub mod gce_metadata;
// Also what doctor probes the lock with, whichever backends are built in.
#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "vault")),
    allow(dead_code)
)]
pub mod imdsd;
