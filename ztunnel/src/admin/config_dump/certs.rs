//! `certificates[]` of the dump: what istioctl's `ztunnel-config certificate` parses. It reads
//! `pem` as base64 of the PEM text, `serialNumber` as a base-10 integer (it prints it in hex)
//! and both times as RFC 3339, so each is encoded exactly that way here.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mesh::identity::{CertState, SpiffeId, summarize};
use rustls_pki_types::CertificateDer;
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CertsDump {
    identity: String,
    state: String,
    cert_chain: Vec<CertDump>,
    root_certs: Vec<CertDump>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct CertDump {
    pem: String,
    serial_number: String,
    valid_from: String,
    expiration_time: String,
}

pub(super) fn certificates(identity: &SpiffeId, state: &CertState) -> CertsDump {
    let (state, chain, roots) = match state {
        CertState::Initializing => ("Initializing".to_owned(), Vec::new(), Vec::new()),
        CertState::Unavailable(cause) => (format!("Unavailable: {cause}"), Vec::new(), Vec::new()),
        CertState::Available { cert, expires_at } => (
            // The store refuses to serve a certificate past its end, whatever the worker does.
            if *expires_at <= tokio::time::Instant::now() {
                "Unavailable: expired".to_owned()
            } else {
                "Available".to_owned()
            },
            cert.chain().iter().filter_map(cert_dump).collect(),
            cert.roots().iter().filter_map(cert_dump).collect(),
        ),
    };
    CertsDump {
        identity: identity.to_string(),
        state,
        cert_chain: chain,
        root_certs: roots,
    }
}

/// One certificate as istioctl reads it; `None` only for DER the store could not have accepted.
fn cert_dump(der: &CertificateDer<'_>) -> Option<CertDump> {
    let summary = summarize(der).ok()?;
    // LF line endings, as the PEM istiod hands out has (the crate's default is CRLF).
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Some(CertDump {
        pem: base64::engine::general_purpose::STANDARD.encode(pem),
        serial_number: decimal(&summary.serial),
        valid_from: rfc3339(summary.not_before),
        expiration_time: rfc3339(summary.not_after),
    })
}

/// A big-endian unsigned integer in base 10. Serials are up to 20 bytes (RFC 5280), past any
/// native integer, so this divides the byte string by ten digit by digit.
pub(super) fn decimal(big_endian: &[u8]) -> String {
    let mut number = big_endian.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|b| *b != 0) {
        let mut remainder = 0_u32;
        for byte in &mut number {
            let value = (remainder << 8) | u32::from(*byte);
            // value < 10 * 256, so the quotient always fits a byte.
            *byte = u8::try_from(value / 10).unwrap_or(u8::MAX);
            remainder = value % 10;
        }
        digits.push(char::from(b'0' + u8::try_from(remainder).unwrap_or(0)));
    }
    if digits.is_empty() {
        return "0".to_owned();
    }
    digits.iter().rev().collect()
}

/// RFC 3339 in UTC with whole seconds, e.g. `2024-05-01T10:00:00Z`; a time before 1970 (which
/// no certificate the store accepts carries) shows as the epoch.
pub(super) fn rfc3339(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, time) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar, by
/// counting 400-year eras of 146 097 days from 0000-03-01 (so leap days fall at era ends).
pub(super) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
