//! Bandwidth Messaging v2: a JSON array of events per call, one HTTP call possibly carrying
//! several events (submitted as one batch).

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use carrier_ingest::v1::{
    Carrier, CarrierContext, DeliveryStatus, InboundMessage, Media, batch_event::Event,
};
use serde::{Deserialize, Serialize};

use super::{
    MAX_EVENTS_PER_CALL, Obj, Webhook, address_list, extras, invalid, json_body, opt_address,
    opt_string, parse_count, require_content_type, url_list,
};
use crate::{
    auth::{Verified, Verifier},
    config::Verifiers,
    error::EdgeError,
};

/// The success body, fields in the spec's order.
#[derive(Debug, Serialize)]
struct Accepted {
    success: bool,
    message: &'static str,
}

/// The Bandwidth webhook.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BwEvent {
    #[serde(rename = "type", default, deserialize_with = "opt_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    time: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    description: Option<String>,
    #[serde(default, deserialize_with = "opt_address")]
    to: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    error_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    carrier_name: Option<String>,
    message: Option<Obj<BwMessage>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BwMessage {
    #[serde(default, deserialize_with = "opt_string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    owner: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    application_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    time: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    segment_count: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    direction: Option<String>,
    #[serde(default, deserialize_with = "address_list")]
    to: Vec<String>,
    #[serde(default, deserialize_with = "opt_address")]
    from: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    text: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    tag: Option<String>,
    #[serde(default, deserialize_with = "url_list")]
    media: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    priority: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    channel: Option<String>,
}

/// Every `message-*` type other than `message-received` is a status of an outbound message:
/// the documented ones (`message-sending`, `-sent`, `-delivered`, `-failed`, `-read`) and any
/// Bandwidth adds later, which become status `UNKNOWN` with the raw type kept.
fn is_status_type(kind: &str) -> bool {
    kind.strip_prefix("message-")
        .is_some_and(|rest| !rest.is_empty() && rest != "received")
}

fn convert(i: usize, event: BwEvent, destination: &str) -> Result<Event, EdgeError> {
    let kind = event.kind.unwrap_or_default();
    let Some(Obj(m)) = event.message else {
        return Err(invalid(format!("[{i}].message"), "is required"));
    };
    let context = |extra: Vec<(&str, Option<String>)>| {
        Some(CarrierContext {
            application_id: m.application_id.clone().unwrap_or_default(),
            destination: destination.to_owned(),
            reference: m.tag.clone().unwrap_or_default(),
            extras: extras(
                [
                    ("owner", m.owner.clone()),
                    ("direction", m.direction.clone()),
                    ("priority", m.priority.clone()),
                    ("channel", m.channel.clone()),
                    ("carrierName", event.carrier_name.clone()),
                ]
                .into_iter()
                .chain(extra),
            ),
            ..Default::default()
        })
    };
    let segment_count = parse_count(m.segment_count.as_deref());
    if kind == "message-received" {
        let to = if m.to.is_empty() {
            event.to.clone().into_iter().collect()
        } else {
            m.to.clone()
        };
        let context = context(vec![]);
        return Ok(Event::Inbound(InboundMessage {
            carrier: Carrier::Bandwidth as i32,
            carrier_message_id: m.id.unwrap_or_default(),
            from: m.from.unwrap_or_default(),
            to,
            text: m.text.unwrap_or_default(),
            media: m
                .media
                .into_iter()
                .filter(|url| !url.trim().is_empty())
                .map(|url| Media {
                    url,
                    ..Default::default()
                })
                .collect(),
            segment_count,
            carrier_time: m.time.or(event.time).unwrap_or_default(),
            context,
        }));
    }
    if !is_status_type(&kind) {
        return Err(invalid(
            format!("[{i}].type"),
            "is not a known Bandwidth message event type",
        ));
    }
    let failed = event.error_code.is_some();
    let context = context(vec![]);
    Ok(Event::Status(DeliveryStatus {
        carrier: Carrier::Bandwidth as i32,
        carrier_message_id: m.id.unwrap_or_default(),
        raw_status: kind,
        error_code: event.error_code.unwrap_or_default(),
        error_description: if failed {
            event.description.unwrap_or_default()
        } else {
            String::new()
        },
        recipient: event
            .to
            .or_else(|| m.to.first().cloned())
            .unwrap_or_default(),
        sender: m.from.unwrap_or_default(),
        status_time: event.time.unwrap_or_default(),
        segment_count,
        context,
        ..Default::default()
    }))
}

impl Webhook for Bandwidth {
    const NAME: &'static str = "bandwidth";
    const CARRIER: Carrier = Carrier::Bandwidth;

    fn verifier(verifiers: &Verifiers) -> &dyn Verifier {
        verifiers.bandwidth.as_ref()
    }

    fn parse(request: &Verified<'_>) -> Result<Vec<Event>, EdgeError> {
        let req = request.request();
        require_content_type(req, "application/json")?;
        let events: Vec<Obj<BwEvent>> = json_body(&req.body)?;
        if events.is_empty() {
            return Err(invalid("[]", "needs at least one event"));
        }
        if events.len() > MAX_EVENTS_PER_CALL {
            return Err(invalid(
                "[]",
                format!("has more than {MAX_EVENTS_PER_CALL} events"),
            ));
        }
        let destination = req.destination.as_deref().unwrap_or("");
        events
            .into_iter()
            .enumerate()
            .map(|(i, Obj(e))| convert(i, e, destination))
            .collect()
    }

    fn accepted(_message_id: &str) -> Response {
        Json(Accepted {
            success: true,
            message: "Message received and queued for processing",
        })
        .into_response()
    }
}
