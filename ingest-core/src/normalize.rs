//! Normalization of what carriers send: phone numbers to E.164, raw statuses to the one status
//! vocabulary, and carrier times to UTC RFC 3339.

use carrier_ingest::v1::{Carrier, MessageStatus};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Why a value could not be normalized; the text is safe to return to a submitter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// The address is empty.
    #[error("is empty")]
    Empty,
    /// The address contains characters no phone number, short code or sender id has.
    #[error("is not a phone number, short code or alphanumeric sender id")]
    BadAddress,
    /// The time is not RFC 3339 / ISO 8601 (or Twilio's `YYMMDDhhmm`).
    #[error("is not an RFC 3339 time")]
    BadTime,
}

/// Normalizes a sender or recipient address.
///
/// Phone numbers become E.164 (`+15551234567`): MessageBird's `15551234567` gains its `+`,
/// formatting (spaces, dashes, dots, parentheses) is dropped, and a bare 10-digit number is taken
/// as North American (`+1`). Short codes (3–8 digits) and alphanumeric sender ids are kept as they
/// are, since they have no E.164 form; so is a 9-digit national number, rather than lose the event.
/// At most 64 characters, none of them control characters.
pub fn address(raw: &str) -> Result<String, NormalizeError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(NormalizeError::Empty);
    }
    // 64 characters, not bytes: JSON (and the edge's OpenAPI `maxLength`) count characters, and
    // a sender id in another script must not be refused at half the length of a Latin one.
    if trimmed.chars().count() > 64 || trimmed.chars().any(char::is_control) {
        return Err(NormalizeError::BadAddress);
    }
    let looks_numeric = trimmed
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')'));
    if !looks_numeric {
        // Alphanumeric sender id ("ACME"), or an address such as an email for RCS: keep as is.
        return Ok(trimmed.to_owned());
    }
    let plus = trimmed.starts_with('+');
    if trimmed[usize::from(plus)..].contains('+') {
        return Err(NormalizeError::BadAddress);
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    match (plus, digits.len()) {
        (_, 0) => Err(NormalizeError::BadAddress),
        (true, 8..=15) => Ok(format!("+{digits}")),
        (true, _) => Err(NormalizeError::BadAddress),
        (false, 10) => Ok(format!("+1{digits}")),
        (false, 11..=15) => Ok(format!("+{digits}")),
        // Short codes, and national numbers we cannot place: kept, digits only.
        (false, 3..=9) => Ok(digits),
        (false, _) => Err(NormalizeError::BadAddress),
    }
}

/// Normalizes a carrier time to UTC RFC 3339; an empty input stays empty (time unknown).
///
/// Accepts RFC 3339 with any offset, ISO 8601 without offset (taken as UTC), Twilio's
/// `RawDlrDoneDate` form `YYMMDDhhmm` (UTC), and Unix epoch seconds (9–10 digits, optionally with
/// a fraction) or milliseconds (13 digits), as Inteliquent and others send them. A 10-digit value
/// that is a valid `YYMMDDhhmm` is read as that.
pub fn time(raw: &str) -> Result<String, NormalizeError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let utc: DateTime<Utc> = if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        t.with_timezone(&Utc)
    } else if let Ok(t) = DateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f%z") {
        t.with_timezone(&Utc)
    } else if let Ok(t) = NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f") {
        t.and_utc()
    } else if let Ok(t) = DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f%#z") {
        // A space instead of the `T`, as SQL-ish systems write it.
        t.with_timezone(&Utc)
    } else if let Ok(t) =
        NaiveDateTime::parse_from_str(raw.trim_end_matches('Z'), "%Y-%m-%d %H:%M:%S%.f")
    {
        t.and_utc()
    } else if let Some(t) = (raw.len() == 10 && raw.bytes().all(|b| b.is_ascii_digit()))
        .then(|| NaiveDateTime::parse_from_str(raw, "%y%m%d%H%M").ok())
        .flatten()
    {
        t.and_utc()
    } else if let Some(t) = epoch(raw) {
        t
    } else {
        return Err(NormalizeError::BadTime);
    };
    Ok(utc.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Unix epoch seconds (9–10 integer digits, optional fraction) or milliseconds (13 digits).
fn epoch(raw: &str) -> Option<DateTime<Utc>> {
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    // Before 2100: a larger number is some other kind of value.
    const LATEST: i64 = 4_102_444_800;
    let t = match (int.len(), frac.is_empty()) {
        (9 | 10, _) => {
            let secs: i64 = int.parse().ok()?;
            let nanos: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}").parse().ok()?
            };
            DateTime::from_timestamp(secs, nanos)
        }
        (13, true) => DateTime::from_timestamp_millis(int.parse().ok()?),
        _ => None,
    }?;
    (t.timestamp() < LATEST).then_some(t)
}

/// Maps a carrier's raw status to the one vocabulary; unknown values become `Unknown`.
pub fn status(carrier: Carrier, raw: &str) -> MessageStatus {
    use MessageStatus as S;
    let raw = raw.trim().to_ascii_lowercase();
    let raw = raw.as_str();
    match carrier {
        Carrier::Twilio => match raw {
            "queued" | "accepted" | "scheduled" => S::Queued,
            "sending" => S::Sending,
            "sent" => S::Sent,
            "delivered" => S::Delivered,
            "undelivered" => S::Undelivered,
            "failed" => S::Failed,
            "read" => S::Read,
            "canceled" => S::Canceled,
            _ => S::Unknown,
        },
        Carrier::Messagebird => match raw {
            "scheduled" => S::Queued,
            "buffered" => S::Sending,
            "sent" => S::Sent,
            "delivered" => S::Delivered,
            "delivery_failed" => S::Failed,
            "expired" => S::Expired,
            _ => S::Unknown,
        },
        Carrier::Bandwidth => match raw {
            "message-sending" => S::Sending,
            "message-sent" => S::Sent,
            "message-delivered" => S::Delivered,
            "message-failed" => S::Failed,
            "message-read" => S::Read,
            _ => S::Unknown,
        },
        Carrier::Inteliquent => match raw {
            "pending" => S::Queued,
            "sent" => S::Sent,
            "delivered" => S::Delivered,
            "failed" => S::Failed,
            "rejected" => S::Rejected,
            "expired" => S::Expired,
            _ => S::Unknown,
        },
        Carrier::Unspecified => S::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses() {
        assert_eq!(address("15551234567").unwrap(), "+15551234567");
        assert_eq!(address("+15551234567").unwrap(), "+15551234567");
        assert_eq!(address("31612345678").unwrap(), "+31612345678");
        assert_eq!(address("5551234567").unwrap(), "+15551234567");
        assert_eq!(address("+1 (555) 123-4567").unwrap(), "+15551234567");
        assert_eq!(address("12345").unwrap(), "12345");
        assert_eq!(address("ACME Inc").unwrap(), "ACME Inc");
        assert_eq!(address(""), Err(NormalizeError::Empty));
        assert_eq!(address("+12"), Err(NormalizeError::BadAddress));
        assert_eq!(address("1+2345"), Err(NormalizeError::BadAddress));
        assert_eq!(address("12"), Err(NormalizeError::BadAddress));
        assert_eq!(address("a\u{0}b"), Err(NormalizeError::BadAddress));
        // Found by schemathesis: a 38-character sender id of 4-byte characters was refused.
        let wide = "😍".repeat(64);
        assert_eq!(address(&wide).unwrap(), wide);
        assert_eq!(address(&"😍".repeat(65)), Err(NormalizeError::BadAddress));
    }

    #[test]
    fn epoch_times() {
        assert_eq!(time("1705314600").unwrap(), "2024-01-15T10:30:00Z");
        assert_eq!(time("1705314600.5").unwrap(), "2024-01-15T10:30:00.500Z");
        assert_eq!(time("1705314600123").unwrap(), "2024-01-15T10:30:00.123Z");
        // A valid YYMMDDhhmm wins over epoch seconds (Twilio's RawDlrDoneDate).
        assert_eq!(time("2401151030").unwrap(), "2024-01-15T10:30:00Z");
        assert!(time("12345").is_err());
        assert!(time("1705314600.").is_ok());
        assert!(time("17053146001234").is_err());
        assert!(time("-1705314600").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            time("2024-01-15T10:30:00.000Z").unwrap(),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(
            time("2024-01-15T10:30:00+00:00").unwrap(),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(
            time("2024-01-15T12:30:05+02:00").unwrap(),
            "2024-01-15T10:30:05Z"
        );
        assert_eq!(
            time("2024-01-15T10:30:00.250Z").unwrap(),
            "2024-01-15T10:30:00.250Z"
        );
        assert_eq!(
            time("2024-01-15T10:30:00+0100").unwrap(),
            "2024-01-15T09:30:00Z"
        );
        assert_eq!(time("2024-01-15T10:30:00").unwrap(), "2024-01-15T10:30:00Z");
        assert_eq!(time("2401151030").unwrap(), "2024-01-15T10:30:00Z");
        assert_eq!(time("2024-01-15 10:30:00").unwrap(), "2024-01-15T10:30:00Z");
        assert_eq!(
            time("2024-01-15 10:30:00Z").unwrap(),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(
            time("2024-01-15 12:30:00+02:00").unwrap(),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(time("").unwrap(), "");
        assert_eq!(time("yesterday"), Err(NormalizeError::BadTime));
        // Neither YYMMDDhhmm nor an epoch second before 2100.
        assert_eq!(time("4999999999"), Err(NormalizeError::BadTime));
    }

    #[test]
    fn statuses_follow_the_table() {
        use MessageStatus as S;
        let table = [
            (Carrier::Twilio, "accepted", S::Queued),
            (Carrier::Twilio, "undelivered", S::Undelivered),
            (Carrier::Twilio, "canceled", S::Canceled),
            (Carrier::Twilio, "partially_delivered", S::Unknown),
            (Carrier::Messagebird, "buffered", S::Sending),
            (Carrier::Messagebird, "delivery_failed", S::Failed),
            (Carrier::Bandwidth, "message-delivered", S::Delivered),
            (Carrier::Bandwidth, "message-read", S::Read),
            (Carrier::Inteliquent, "pending", S::Queued),
            (Carrier::Inteliquent, "rejected", S::Rejected),
            (Carrier::Inteliquent, "exploded", S::Unknown),
        ];
        for (carrier, raw, want) in table {
            assert_eq!(status(carrier, raw), want, "{carrier:?} {raw}");
        }
    }

    proptest! {
        #[test]
        fn address_never_panics_and_is_idempotent(s in "\\PC{0,40}") {
            if let Ok(a) = address(&s) {
                prop_assert_eq!(address(&a).unwrap(), a);
            }
        }

        #[test]
        fn time_never_panics(s in "\\PC{0,40}") {
            let _ = time(&s);
        }
    }
}
