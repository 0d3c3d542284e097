//! Inteliquent: JSON SMS, MMS (with attachments) and delivery receipts. Field validation
//! failures answer 422, as Inteliquent's contract says.

use axum::{http::StatusCode, response::Response};
use carrier_ingest::v1::{
    Carrier, CarrierContext, DeliveryStatus, InboundMessage, Media, batch_event::Event,
};
use serde::Deserialize;

use super::{
    Obj, Webhook, accepted_with_id, address_list, extras, json_body, opt_address, opt_string,
    opt_whole, require_content_type,
};
use crate::{
    auth::{Verified, Verifier},
    config::Verifiers,
    error::{EdgeError, FieldViolation},
};

/// The Inteliquent webhook.
#[derive(Debug, Clone, Copy)]
pub struct Inteliquent;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IqPayload {
    #[serde(default, deserialize_with = "opt_string")]
    message_id: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "opt_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "opt_address")]
    from: Option<String>,
    #[serde(default, deserialize_with = "address_list")]
    to: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    text: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    timestamp: Option<String>,
    #[serde(default)]
    attachments: Vec<Obj<IqAttachment>>,
    #[serde(default, deserialize_with = "opt_string")]
    status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    error_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    error_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IqAttachment {
    #[serde(default, deserialize_with = "opt_string")]
    url: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "opt_whole")]
    size: Option<u64>,
}

fn required(violations: &mut Vec<FieldViolation>, field: &str, value: Option<&str>) {
    if value.is_none_or(|v| v.trim().is_empty()) {
        violations.push(FieldViolation {
            field: field.to_owned(),
            description: "is required".to_owned(),
        });
    }
}

impl Webhook for Inteliquent {
    const NAME: &'static str = "inteliquent";
    const CARRIER: Carrier = Carrier::Inteliquent;
    const INVALID_STATUS: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

    fn verifier(verifiers: &Verifiers) -> &dyn Verifier {
        verifiers.inteliquent.as_ref()
    }

    fn parse(request: &Verified<'_>) -> Result<Vec<Event>, EdgeError> {
        let req = request.request();
        require_content_type(req, "application/json")?;
        let Obj(p) = json_body::<Obj<IqPayload>>(&req.body)?;
        let mut v = Vec::new();
        required(&mut v, "messageId", p.message_id.as_deref());
        required(&mut v, "timestamp", p.timestamp.as_deref());
        let kind = p.kind.clone().unwrap_or_default();
        match kind.as_str() {
            "sms" | "mms" => {
                required(&mut v, "from", p.from.as_deref());
                required(&mut v, "to", p.to.first().map(String::as_str));
            }
            "delivery_receipt" => required(&mut v, "status", p.status.as_deref()),
            "" => required(&mut v, "type", None),
            _ => v.push(FieldViolation {
                field: "type".to_owned(),
                description: "must be sms, mms or delivery_receipt".to_owned(),
            }),
        }
        if !v.is_empty() {
            return Err(EdgeError::Invalid(v));
        }
        let event = if kind == "delivery_receipt" {
            Event::Status(DeliveryStatus {
                carrier: Carrier::Inteliquent as i32,
                carrier_message_id: p.message_id.unwrap_or_default(),
                raw_status: p.status.unwrap_or_default(),
                error_code: p.error_code.unwrap_or_default(),
                error_description: p.error_message.unwrap_or_default(),
                recipient: p.to.into_iter().next().unwrap_or_default(),
                sender: p.from.unwrap_or_default(),
                status_time: p.timestamp.unwrap_or_default(),
                ..Default::default()
            })
        } else {
            Event::Inbound(InboundMessage {
                carrier: Carrier::Inteliquent as i32,
                carrier_message_id: p.message_id.unwrap_or_default(),
                from: p.from.unwrap_or_default(),
                to: p.to,
                text: p.text.unwrap_or_default(),
                // `attachments[].url` is optional in Inteliquent's contract: an attachment
                // without one cannot be fetched, but must not cost the message its delivery.
                media: p
                    .attachments
                    .into_iter()
                    .filter_map(|Obj(a)| {
                        let url = a.url.filter(|u| !u.trim().is_empty())?;
                        Some(Media {
                            url,
                            content_type: a.content_type.unwrap_or_default(),
                            size_bytes: a.size,
                        })
                    })
                    .collect(),
                carrier_time: p.timestamp.unwrap_or_default(),
                context: Some(CarrierContext {
                    extras: extras([("type", Some(kind))]),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        Ok(vec![event])
    }

    fn accepted(message_id: &str) -> Response {
        accepted_with_id(message_id, Some("accepted"))
    }
}
