//! Quarantine records: carrier calls that passed authentication but could not become events,
//! kept on the quarantine queue (SQS, or `quarantine.jsonl` in the spool) so an operator can see
//! and replay them. This module owns their queue format, shared with the operator's CLI.

use base64::Engine;
use carrier_ingest::v1::{Carrier, QuarantineRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    event::{Violation, carrier_name},
    publish::{Attribute, OutboundEvent},
};

/// Largest body kept per record (the edge's body limit is usually smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Version of the queue format below.
pub const SCHEMA_VERSION: u32 = 1;
/// The reasons a record can have (the edge's error kinds), for metric labels.
pub const REASONS: [&str; 3] = [
    "malformed_request",
    "invalid_request",
    "unsupported_media_type",
];

/// One quarantined call on the queue: a JSON object per message (or per `quarantine.jsonl`
/// line). The body is kept as text when it is UTF-8, otherwise base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Deterministic id: a digest of carrier, method, path, query, content type and body.
    pub record_id: String,
    /// Format version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Carrier name (`bandwidth`, …).
    pub carrier: String,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Raw query string, without `?`.
    #[serde(default)]
    pub query: String,
    /// `Content-Type` as sent.
    #[serde(default)]
    pub content_type: String,
    /// The verification scheme that vouched for the call.
    pub verified_by: String,
    /// When the edge received it (UTC RFC 3339).
    pub received_at: String,
    /// When the core kept it (UTC RFC 3339).
    pub quarantined_at: String,
    /// Why it could not become events (`invalid_request`, …).
    pub reason: String,
    /// The parse error, as text.
    #[serde(default)]
    pub detail: String,
    /// Field violations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<EntryViolation>,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
    /// The body as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// A field violation of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryViolation {
    /// The field.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl Entry {
    /// The raw body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// The length of the raw body (a text body is not copied).
    pub fn body_len(&self) -> usize {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.len(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_or(0, |b| b.len()),
            (None, None) => 0,
        }
    }

    /// The queue message for this entry.
    pub fn to_outbound(&self) -> OutboundEvent {
        OutboundEvent {
            event_id: format!("q-{}", self.record_id),
            // Serializing plain strings cannot fail.
            body: serde_json::to_string(self).unwrap_or_default(),
            group_id: format!("quarantine-{}", self.carrier),
            attributes: vec![
                Attribute::text("carrier", self.carrier.clone()),
                Attribute::text("kind", "quarantine"),
                Attribute::text("reason", self.reason.clone()),
                Attribute::number("schema_version", SCHEMA_VERSION),
            ],
        }
    }
}

/// Checks a submitted record and turns it into its queue entry.
pub fn entry(record: QuarantineRecord, now: &str) -> Result<Entry, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut fail = |field: &str, description: &str| {
        violations.push(Violation {
            field: format!("record.{field}"),
            description: description.to_owned(),
        });
    };
    let carrier = match Carrier::try_from(record.carrier) {
        Ok(Carrier::Unspecified) | Err(_) => {
            fail("carrier", "is required");
            Carrier::Unspecified
        }
        Ok(c) => c,
    };
    if record.method.trim().is_empty() || record.method.len() > 16 {
        fail("method", "is required (at most 16 bytes)");
    }
    // Whatever the edge's HTTP server took (a request line may be long: GET webhooks carry
    // their fields in the query) must fit, or an authentic call could not be kept.
    if !record.path.starts_with('/') || record.path.len() > MAX_BODY_BYTES {
        fail("path", "must start with / (at most 1 MiB)");
    }
    if record.raw_query.len() > MAX_BODY_BYTES {
        fail("raw_query", "is longer than 1 MiB");
    }
    if !REASONS.contains(&record.reason.as_str()) {
        fail("reason", "is not a known reason");
    }
    if record.body.len() > MAX_BODY_BYTES {
        fail("body", "is larger than 1 MiB");
    }
    if record.violations.len() > 100 || record.detail.len() > 4096 {
        fail(
            "violations",
            "at most 100 violations and 4096 bytes of detail",
        );
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let body_sha256 = hex::encode(Sha256::digest(&record.body));
    let mut h = Sha256::new();
    for part in [
        carrier_name(carrier).as_bytes(),
        record.method.as_bytes(),
        record.path.as_bytes(),
        record.raw_query.as_bytes(),
        record.content_type.as_bytes(),
        &record.body,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let record_id = hex::encode(&h.finalize()[..16]);
    let (body, body_base64) = match String::from_utf8(record.body) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        ),
    };
    Ok(Entry {
        record_id,
        schema_version: SCHEMA_VERSION,
        carrier: carrier_name(carrier).to_owned(),
        method: record.method,
        path: record.path,
        query: record.raw_query,
        content_type: record.content_type,
        verified_by: record.verified_by,
        received_at: if record.received_at.is_empty() {
            now.to_owned()
        } else {
            record.received_at
        },
        quarantined_at: now.to_owned(),
        reason: record.reason,
        detail: record.detail,
        violations: record
            .violations
            .into_iter()
            .map(|v| EntryViolation {
                field: v.field,
                description: v.description,
            })
            .collect(),
        body_sha256,
        body,
        body_base64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8]) -> QuarantineRecord {
        QuarantineRecord {
            carrier: Carrier::Twilio as i32,
            method: "POST".into(),
            path: "/twilio".into(),
            reason: "invalid_request".into(),
            verified_by: "Twilio signature".into(),
            body: body.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_stable_and_bodies_round_trip_as_text_or_base64() {
        let a = entry(record(b"From=x"), "t").unwrap();
        let b = entry(record(b"From=x"), "u").unwrap();
        assert_eq!(a.record_id, b.record_id);
        assert_eq!(a.body.as_deref(), Some("From=x"));
        assert_eq!(a.body_bytes(), b"From=x");
        let q = QuarantineRecord {
            raw_query: "From=x".into(),
            ..record(b"")
        };
        assert_ne!(
            entry(q, "t").unwrap().record_id,
            entry(record(b""), "t").unwrap().record_id,
            "a GET's query is part of its identity"
        );
        let binary = entry(record(&[0xff, 0xfe, 0]), "t").unwrap();
        assert!(binary.body.is_none());
        assert_eq!(binary.body_bytes(), [0xff, 0xfe, 0]);
        assert_eq!(binary.body_len(), 3);
        assert_eq!(a.body_len(), 6);
        let out = a.to_outbound();
        assert_eq!(out.attribute("reason"), Some("invalid_request"));
        assert_eq!(out.attribute("kind"), Some("quarantine"));
        let back: Entry = serde_json::from_str(&out.body).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn bad_records_are_refused() {
        let bad = QuarantineRecord {
            carrier: 0,
            path: "x".into(),
            reason: "because".into(),
            ..record(b"")
        };
        let v = entry(bad, "t").unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["record.carrier", "record.path", "record.reason"]);
    }
}
