//! The validity period of a PEM certificate, read with a minimal DER walk (no X.509 library is
//! linked for the one field the node needs before a certificate login): the first certificate of
//! the file, `tbsCertificate.validity` (RFC 5280, 4.1.2.5).

use base64::Engine as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When a certificate starts and stops being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Where a certificate stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    NotYetValid,
    Valid { left: Duration },
    Expired { since: Duration },
}

impl Validity {
    pub fn at(&self, now: SystemTime) -> Standing {
        if now < self.not_before {
            Standing::NotYetValid
        } else if let Ok(since) = now.duration_since(self.not_after) {
            if since.is_zero() {
                Standing::Valid {
                    left: Duration::ZERO,
                }
            } else {
                Standing::Expired { since }
            }
        } else {
            Standing::Valid {
                left: self.not_after.duration_since(now).unwrap_or_default(),
            }
        }
    }
}

/// The validity of the first `CERTIFICATE` block of a PEM text.
pub fn first_certificate_validity(pem: &[u8]) -> Result<Validity, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM text".to_string())?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text
        .find(begin)
        .ok_or_else(|| "no `BEGIN CERTIFICATE` block".to_string())?
        + begin.len();
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or_else(|| "a `BEGIN CERTIFICATE` block without its end".to_string())?
        + start;
    let b64: String = text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the certificate block is not base64".to_string())?;
    validity_of_der(&der)
}

/// One DER element: (tag, content, rest).
fn element(d: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "the certificate is not DER".to_string();
    let (&tag, d) = d.split_first().ok_or_else(bad)?;
    let (&first, d) = d.split_first().ok_or_else(bad)?;
    let (len, d) = if first < 0x80 {
        (first as usize, d)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < n {
            return Err(bad());
        }
        let len = d[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &d[n..])
    };
    if d.len() < len {
        return Err(bad());
    }
    Ok((tag, &d[..len], &d[len..]))
}

fn validity_of_der(der: &[u8]) -> Result<Validity, String> {
    const SEQUENCE: u8 = 0x30;
    let bad = |what: &str| format!("the certificate is not an X.509 certificate ({what})");
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return Err(bad("outer"));
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return Err(bad("tbsCertificate"));
    }
    let mut rest = tbs;
    let (tag, _, r) = element(rest)?;
    // [0] EXPLICIT version, when present; then the serial number.
    if tag == 0xa0 {
        let (tag, _, r2) = element(r)?;
        if tag != 0x02 {
            return Err(bad("serialNumber"));
        }
        rest = r2;
    } else if tag == 0x02 {
        rest = r;
    } else {
        return Err(bad("serialNumber"));
    }
    // signature AlgorithmIdentifier, issuer Name, then validity.
    for what in ["signature", "issuer"] {
        let (tag, _, r) = element(rest)?;
        if tag != SEQUENCE {
            return Err(bad(what));
        }
        rest = r;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return Err(bad("validity"));
    }
    let (t1, nb, r) = element(validity)?;
    let (t2, na, _) = element(r)?;
    Ok(Validity {
        not_before: time(t1, nb).ok_or_else(|| bad("notBefore"))?,
        not_after: time(t2, na).ok_or_else(|| bad("notAfter"))?,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
    } else {
        Some(UNIX_EPOCH - Duration::from_secs((-secs) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 certificate valid from 2024-01-01T00:00:00Z (a UTCTime) to
    /// 2050-12-31T23:59:59Z (a GeneralizedTime, as RFC 5280 requires from 2050 on).
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBKTCB0KADAgECAhQyPSFm7UmiPjk3MnuAPiXKQLaKlTAKBggqhkjOPQQDAjAU
MRIwEAYDVQQDDAllZGdlLW5vZGUwIBcNMjQwMTAxMDAwMDAwWhgPMjA1MDEyMzEy
MzU5NTlaMBQxEjAQBgNVBAMMCWVkZ2Utbm9kZTBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABK+0BCSXBw/N7GjTF3LYv1IAjWgd+ymYTkzlQcYcPyiMEL+yh8slmxS3
6uQoqZNo6IYO4N5wCnXfzpfyaShm57UwCgYIKoZIzj0EAwIDSAAwRQIhAMRmjxZI
k+6nkHDPKagm0FohJcF+sTPFAyqWi8PKgDkVAiB3NsKH2+o1rDIHt+Fr73NxfUjj
b/5Ss7OXwmRoy05Q6w==
-----END CERTIFICATE-----";

    #[test]
    fn utc_and_generalized_times_are_read() {
        assert_eq!(
            time(0x17, b"240101000000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_704_067_200))
        );
        assert_eq!(
            time(0x18, b"20501231235959Z"),
            Some(UNIX_EPOCH + Duration::from_secs(2_556_143_999))
        );
        assert_eq!(
            time(0x17, b"991231235959Z").map(|t| t < UNIX_EPOCH + Duration::from_secs(946_684_800)),
            Some(true)
        );
        assert_eq!(time(0x17, b"241301000000Z"), None);
        assert_eq!(time(0x17, b"2401010000Z"), None);
    }

    #[test]
    fn the_validity_of_a_pem_certificate() {
        let v = first_certificate_validity(PEM.as_bytes()).unwrap();
        assert_eq!(
            v.not_before,
            UNIX_EPOCH + Duration::from_secs(1_704_067_200)
        );
        assert_eq!(v.not_after, UNIX_EPOCH + Duration::from_secs(2_556_143_999));
        assert_eq!(
            v.at(UNIX_EPOCH + Duration::from_secs(1_704_067_199)),
            Standing::NotYetValid
        );
        assert_eq!(
            v.at(UNIX_EPOCH + Duration::from_secs(2_556_144_009)),
            Standing::Expired {
                since: Duration::from_secs(10)
            }
        );
        assert!(matches!(
            v.at(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            Standing::Valid { .. }
        ));
        assert!(first_certificate_validity(b"no pem here").is_err());
        assert!(
            first_certificate_validity(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
            )
            .is_err()
        );
    }
}
