//! Validation and normalization of submitted events into what is published.

use carrier_ingest::v1::{
    BatchEvent, Carrier, CarrierContext, DeliveryStatus, Envelope, InboundMessage, MessageStatus,
    batch_event, envelope,
};
use chrono::{SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::{
    normalize,
    publish::{Attribute, EventKind, OutboundEvent},
};

/// Version of the published `Envelope` schema.
pub const SCHEMA_VERSION: u32 = 1;

// Limits of short text fields count characters, as JSON and the HTTP contract (OpenAPI's
// `maxLength`) do: a byte limit made the same 20-character error code valid in ASCII and invalid
// in Greek. Long fields (text, extras, URLs) stay byte limits, as they bound the message size.
const MAX_ID_LEN: usize = 256;
const MAX_RECIPIENTS: usize = 100;
const MAX_MEDIA: usize = 50;
const MAX_TEXT_BYTES: usize = 64 * 1024;
const MAX_STATUS_LEN: usize = 64;
const MAX_EXTRAS: usize = 64;
const MAX_EXTRA_KEY: usize = 128;
const MAX_EXTRA_VALUE: usize = 4096;
const MAX_URL_LEN: usize = 4096;

/// One problem with a submitted field; `field` is a path such as `events[2].inbound.from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong, safe to show to the submitter (never echoes the value).
    pub description: String,
}

/// A valid, normalized event with its identity, ready to dedupe and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// Deterministic id from the dedupe key.
    pub event_id: String,
    /// Inbound or status.
    pub kind: EventKind,
    /// Carrier of the event.
    pub carrier: Carrier,
    /// The carrier's message id (for log fields).
    pub carrier_message_id: String,
    /// Ordering group for FIFO queues.
    pub group_id: String,
    /// Normalized status, `Unspecified` for inbound.
    pub status: MessageStatus,
    /// The normalized event.
    pub event: envelope::Event,
}

/// The submitted form of an event.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// An inbound message.
    Inbound(InboundMessage),
    /// A delivery status.
    Status(DeliveryStatus),
}

impl Submitted {
    /// The event of a batch entry, if it has one.
    pub fn from_batch(event: BatchEvent) -> Option<Self> {
        match event.event? {
            batch_event::Event::Inbound(m) => Some(Self::Inbound(m)),
            batch_event::Event::Status(s) => Some(Self::Status(s)),
        }
    }
}

/// The lower-case carrier name used in keys, attributes and logs.
pub fn carrier_name(carrier: Carrier) -> &'static str {
    match carrier {
        Carrier::Unspecified => "unspecified",
        Carrier::Bandwidth => "bandwidth",
        Carrier::Twilio => "twilio",
        Carrier::Messagebird => "messagebird",
        Carrier::Inteliquent => "inteliquent",
    }
}

/// The lower-case name of a normalized status, as in message attributes.
pub fn status_name(status: MessageStatus) -> &'static str {
    match status {
        MessageStatus::Unspecified => "",
        MessageStatus::Queued => "queued",
        MessageStatus::Sending => "sending",
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Undelivered => "undelivered",
        MessageStatus::Failed => "failed",
        MessageStatus::Expired => "expired",
        MessageStatus::Rejected => "rejected",
        MessageStatus::Read => "read",
        MessageStatus::Canceled => "canceled",
        MessageStatus::Unknown => "unknown",
    }
}

/// A 128-bit hex digest of `parts`, unambiguous across part boundaries.
fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

struct Check<'a> {
    prefix: &'a str,
    violations: Vec<Violation>,
    /// Carrier times that could not be read, kept raw in `context.extras` under these keys.
    unparsed: Vec<(String, String)>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.violations.push(Violation {
            field: format!("{}{field}", self.prefix),
            description: description.into(),
        });
    }

    fn carrier(&mut self, raw: i32) -> Carrier {
        match Carrier::try_from(raw) {
            Ok(Carrier::Unspecified) => {
                self.fail("carrier", "is required");
                Carrier::Unspecified
            }
            Ok(c) => c,
            Err(_) => {
                self.fail("carrier", "is not a known carrier");
                Carrier::Unspecified
            }
        }
    }

    fn id(&mut self, field: &str, value: &str) -> String {
        let v = value.trim();
        if v.is_empty() {
            self.fail(field, "is required");
        } else if v.chars().count() > MAX_ID_LEN || v.chars().any(char::is_control) {
            self.fail(
                field,
                format!("must be at most {MAX_ID_LEN} characters of printable text"),
            );
        }
        v.to_owned()
    }

    fn address(&mut self, field: &str, value: &str, required: bool) -> String {
        if value.trim().is_empty() && !required {
            return String::new();
        }
        match normalize::address(value) {
            Ok(a) => a,
            Err(normalize::NormalizeError::Empty) => {
                self.fail(field, "is required");
                String::new()
            }
            Err(e) => {
                self.fail(field, e.to_string());
                String::new()
            }
        }
    }

    /// A carrier time we cannot read must not cost the event: the normalized time stays empty
    /// and the raw value is kept in `context.extras["unparsed_<field>"]`.
    fn time(&mut self, field: &str, value: &str) -> String {
        normalize::time(value).unwrap_or_else(|_| {
            let mut raw = value.trim().to_owned();
            if raw.len() > MAX_EXTRA_VALUE {
                let mut end = MAX_EXTRA_VALUE;
                while !raw.is_char_boundary(end) {
                    end -= 1;
                }
                raw.truncate(end);
            }
            self.unparsed.push((format!("unparsed_{field}"), raw));
            String::new()
        })
    }

    fn context(&mut self, context: Option<CarrierContext>) -> Option<CarrierContext> {
        let mut context = match (context, self.unparsed.is_empty()) {
            (None, true) => return None,
            (context, _) => context.unwrap_or_default(),
        };
        if context.extras.len() > MAX_EXTRAS {
            self.fail(
                "context.extras",
                format!("has more than {MAX_EXTRAS} entries"),
            );
        }
        for (k, v) in &context.extras {
            if k.is_empty() || k.len() > MAX_EXTRA_KEY || v.len() > MAX_EXTRA_VALUE {
                self.fail(
                    "context.extras",
                    format!(
                        "keys must be 1..={MAX_EXTRA_KEY} bytes, values at most {MAX_EXTRA_VALUE}"
                    ),
                );
                break;
            }
        }
        context.extras.extend(self.unparsed.drain(..));
        Some(context)
    }
}

/// Validates and normalizes one event. `prefix` is prepended to violation paths.
pub fn normalize(submitted: Submitted, prefix: &str) -> Result<Normalized, Vec<Violation>> {
    let mut c = Check {
        prefix,
        violations: Vec::new(),
        unparsed: Vec::new(),
    };
    let normalized = match submitted {
        Submitted::Inbound(m) => inbound(&mut c, m),
        Submitted::Status(s) => status(&mut c, s),
    };
    if c.violations.is_empty() {
        Ok(normalized)
    } else {
        Err(c.violations)
    }
}

fn inbound(c: &mut Check<'_>, m: InboundMessage) -> Normalized {
    let carrier = c.carrier(m.carrier);
    let id = c.id("carrier_message_id", &m.carrier_message_id);
    let from = c.address("from", &m.from, true);
    if m.to.is_empty() {
        c.fail("to", "needs at least one recipient");
    } else if m.to.len() > MAX_RECIPIENTS {
        c.fail("to", format!("has more than {MAX_RECIPIENTS} recipients"));
    }
    let to: Vec<String> =
        m.to.iter()
            .enumerate()
            .map(|(i, t)| c.address(&format!("to[{i}]"), t, true))
            .collect();
    if m.text.len() > MAX_TEXT_BYTES {
        c.fail("text", format!("is longer than {MAX_TEXT_BYTES} bytes"));
    }
    if m.media.len() > MAX_MEDIA {
        c.fail("media", format!("has more than {MAX_MEDIA} items"));
    }
    for (i, media) in m.media.iter().enumerate() {
        if media.url.trim().is_empty() || media.url.len() > MAX_URL_LEN {
            c.fail(
                &format!("media[{i}].url"),
                "is required and at most 4096 bytes",
            );
        }
    }
    let carrier_time = c.time("carrier_time", &m.carrier_time);
    let context = c.context(m.context);

    let name = carrier_name(carrier);
    let event_id = digest(&["inbound", name, &id]);
    let group_id = digest(&[
        "conversation",
        name,
        &from,
        to.first().map_or("", String::as_str),
    ]);
    Normalized {
        event_id,
        kind: EventKind::Inbound,
        carrier,
        carrier_message_id: id.clone(),
        group_id,
        status: MessageStatus::Unspecified,
        event: envelope::Event::Inbound(InboundMessage {
            carrier: carrier as i32,
            carrier_message_id: id,
            from,
            to,
            carrier_time,
            context,
            ..m
        }),
    }
}

fn status(c: &mut Check<'_>, s: DeliveryStatus) -> Normalized {
    let carrier = c.carrier(s.carrier);
    let id = c.id("carrier_message_id", &s.carrier_message_id);
    let raw_status = s.raw_status.trim().to_owned();
    if raw_status.is_empty() {
        c.fail("raw_status", "is required");
    } else if raw_status.chars().count() > MAX_STATUS_LEN {
        c.fail(
            "raw_status",
            format!("is longer than {MAX_STATUS_LEN} characters"),
        );
    }
    let recipient = c.address("recipient", &s.recipient, false);
    let sender = c.address("sender", &s.sender, false);
    let status_time = c.time("status_time", &s.status_time);
    if s.error_code.chars().count() > MAX_STATUS_LEN {
        c.fail(
            "error_code",
            format!("is longer than {MAX_STATUS_LEN} characters"),
        );
    }
    if s.error_description.len() > MAX_EXTRA_VALUE {
        c.fail(
            "error_description",
            format!("is longer than {MAX_EXTRA_VALUE} bytes"),
        );
    }
    let context = c.context(s.context);

    let normalized = normalize::status(carrier, &raw_status);
    let name = carrier_name(carrier);
    let event_id = digest(&[
        "status",
        name,
        &id,
        &raw_status.to_ascii_lowercase(),
        &recipient,
    ]);
    let group_id = digest(&["message", name, &id]);
    Normalized {
        event_id,
        kind: EventKind::Status,
        carrier,
        carrier_message_id: id.clone(),
        group_id,
        status: normalized,
        event: envelope::Event::Status(DeliveryStatus {
            carrier: carrier as i32,
            carrier_message_id: id,
            raw_status,
            status: normalized as i32,
            recipient,
            sender,
            status_time,
            context,
            ..s
        }),
    }
}

impl Normalized {
    /// The envelope and its queue message, stamped with the time of acceptance.
    pub fn into_outbound(self) -> OutboundEvent {
        let envelope = Envelope {
            event_id: self.event_id,
            schema_version: SCHEMA_VERSION,
            received_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            event: Some(self.event),
        };
        // Room for the trace context the pipeline adds.
        let mut attributes = Vec::with_capacity(6);
        attributes.push(Attribute::text("carrier", carrier_name(self.carrier)));
        attributes.push(Attribute::text("kind", self.kind.as_str()));
        let status = status_name(self.status);
        if !status.is_empty() {
            attributes.push(Attribute::text("status", status));
        }
        attributes.push(Attribute::number("schema_version", SCHEMA_VERSION));
        OutboundEvent {
            // Serializing generated types to a String cannot fail (no non-string map keys).
            body: serde_json::to_string(&envelope).unwrap_or_default(),
            event_id: envelope.event_id,
            group_id: self.group_id,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrier_ingest::v1::Media;

    fn inbound_msg() -> InboundMessage {
        InboundMessage {
            carrier: Carrier::Messagebird as i32,
            carrier_message_id: "mb-1".into(),
            from: "15559876543".into(),
            to: vec!["15551234567".into()],
            text: "hi".into(),
            carrier_time: "2024-01-15T10:30:00+00:00".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_unreadable_time_is_kept_raw_and_costs_nothing() {
        let m = InboundMessage {
            carrier_time: "next tuesday-ish".into(),
            ..inbound_msg()
        };
        let n = normalize(Submitted::Inbound(m), "").unwrap();
        let envelope::Event::Inbound(m) = n.event else {
            panic!("inbound")
        };
        assert_eq!(m.carrier_time, "");
        assert_eq!(
            m.context.unwrap().extras["unparsed_carrier_time"],
            "next tuesday-ish"
        );
        let s = DeliveryStatus {
            carrier: Carrier::Twilio as i32,
            carrier_message_id: "SM1".into(),
            raw_status: "delivered".into(),
            status_time: "1705314600".into(),
            ..Default::default()
        };
        let n = normalize(Submitted::Status(s), "").unwrap();
        let envelope::Event::Status(s) = n.event else {
            panic!("status")
        };
        assert_eq!(s.status_time, "2024-01-15T10:30:00Z", "epoch seconds");
        assert!(s.context.is_none(), "nothing unparsed, no context made up");
    }

    #[test]
    fn inbound_is_normalized_with_a_stable_id() {
        let n = normalize(Submitted::Inbound(inbound_msg()), "").unwrap();
        let again = normalize(Submitted::Inbound(inbound_msg()), "").unwrap();
        assert_eq!(n.event_id, again.event_id);
        assert_eq!(n.event_id.len(), 32);
        let envelope::Event::Inbound(m) = &n.event else {
            panic!("not inbound")
        };
        assert_eq!(m.from, "+15559876543");
        assert_eq!(m.to, vec!["+15551234567"]);
        assert_eq!(m.carrier_time, "2024-01-15T10:30:00Z");

        let body: serde_json::Value =
            serde_json::from_str(&n.clone().into_outbound().body).unwrap();
        assert_eq!(body["eventId"], n.event_id.as_str());
        assert_eq!(body["inbound"]["from"], "+15559876543");
        assert_eq!(body["schemaVersion"], 1);
    }

    #[test]
    fn status_keys_include_raw_status_and_recipient() {
        let s = |raw: &str, to: &str| DeliveryStatus {
            carrier: Carrier::Twilio as i32,
            carrier_message_id: "SM1".into(),
            raw_status: raw.into(),
            recipient: to.into(),
            ..Default::default()
        };
        let a = normalize(Submitted::Status(s("sent", "+15551234567")), "").unwrap();
        let b = normalize(Submitted::Status(s("delivered", "+15551234567")), "").unwrap();
        let c = normalize(Submitted::Status(s("delivered", "+15550000000")), "").unwrap();
        assert_ne!(a.event_id, b.event_id);
        assert_ne!(b.event_id, c.event_id);
        assert_eq!(a.group_id, b.group_id);
        assert_eq!(b.status, MessageStatus::Delivered);
        let unknown = normalize(Submitted::Status(s("partially_delivered", "")), "").unwrap();
        assert_eq!(unknown.status, MessageStatus::Unknown);
        let envelope::Event::Status(st) = unknown.event else {
            panic!("not status")
        };
        assert_eq!(st.raw_status, "partially_delivered");
    }

    #[test]
    fn violations_name_every_bad_field() {
        let m = InboundMessage {
            carrier: 0,
            carrier_message_id: " ".into(),
            from: "".into(),
            to: vec![],
            carrier_time: "soon".into(),
            media: vec![Media::default()],
            ..Default::default()
        };
        let v = normalize(Submitted::Inbound(m), "message.").unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "message.carrier",
                "message.carrier_message_id",
                "message.from",
                "message.to",
                "message.media[0].url",
            ],
            "an unreadable time is not a violation"
        );
        let s = DeliveryStatus {
            carrier: 99,
            ..Default::default()
        };
        let v = normalize(Submitted::Status(s), "").unwrap_err();
        assert_eq!(v[0].description, "is not a known carrier");
        assert!(v.iter().any(|v| v.field == "raw_status"));
    }

    #[test]
    fn short_field_limits_count_characters_not_bytes() {
        // Found by schemathesis against the OpenAPI `maxLength`: 20 Greek letters are 40 bytes.
        let s = |raw: String, code: String, id: String| DeliveryStatus {
            carrier: Carrier::Twilio as i32,
            carrier_message_id: id,
            raw_status: raw,
            error_code: code,
            ..Default::default()
        };
        let at_limit = s("δ".repeat(64), "ε".repeat(64), "ζ".repeat(256));
        assert!(normalize(Submitted::Status(at_limit), "").is_ok());
        let over = s("δ".repeat(65), "ε".repeat(65), "ζ".repeat(257));
        let fields: Vec<String> = normalize(Submitted::Status(over), "")
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["carrier_message_id", "raw_status", "error_code"]);
    }
}
