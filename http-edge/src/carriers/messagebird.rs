//! MessageBird: JSON POST webhooks, and the legacy GET webhooks with query parameters.

use axum::response::Response;
use carrier_ingest::v1::{
    Carrier, CarrierContext, DeliveryStatus, InboundMessage, batch_event::Event,
};
use http::Method;
use serde::Deserialize;

use super::{
    Obj, Webhook, accepted_with_id, extras, invalid, json_body, opt_address, opt_string,
    require_content_type,
};
use crate::{
    auth::{Verified, Verifier},
    config::Verifiers,
    error::EdgeError,
};

/// The MessageBird webhook.
#[derive(Debug, Clone, Copy)]
pub struct MessageBird;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MbPayload {
    #[serde(default, deserialize_with = "opt_string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "opt_address")]
    recipient: Option<String>,
    #[serde(default, deserialize_with = "opt_address")]
    originator: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    body: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    created_datetime: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    status_datetime: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    reference: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    status_reason: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    status_error_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    mccmnc: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    ported: Option<String>,
}

impl Webhook for MessageBird {
    const NAME: &'static str = "messagebird";
    const CARRIER: Carrier = Carrier::Messagebird;

    fn verifier(verifiers: &Verifiers) -> &dyn Verifier {
        verifiers.messagebird.as_ref()
    }

    fn parse(request: &Verified<'_>) -> Result<Vec<Event>, EdgeError> {
        let req = request.request();
        let p: MbPayload = if req.method == Method::GET {
            serde_urlencoded::from_str(req.raw_query())
                .map_err(|_| EdgeError::Malformed("invalid query string".to_owned()))?
        } else {
            require_content_type(req, "application/json")?;
            json_body::<Obj<MbPayload>>(&req.body)?.0
        };
        if p.id.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("id", "is required"));
        }
        if p.recipient.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("recipient", "is required"));
        }
        let context = Some(CarrierContext {
            reference: p.reference.unwrap_or_default(),
            extras: extras([("mccmnc", p.mccmnc), ("ported", p.ported)]),
            ..Default::default()
        });
        let event = match p.status {
            Some(raw_status) => Event::Status(DeliveryStatus {
                carrier: Carrier::Messagebird as i32,
                carrier_message_id: p.id.unwrap_or_default(),
                raw_status,
                error_code: p.status_error_code.unwrap_or_default(),
                error_description: p.status_reason.unwrap_or_default(),
                recipient: p.recipient.unwrap_or_default(),
                sender: p.originator.unwrap_or_default(),
                status_time: p.status_datetime.unwrap_or_default(),
                context,
                ..Default::default()
            }),
            None => {
                if p.originator.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid("originator", "is required"));
                }
                Event::Inbound(InboundMessage {
                    carrier: Carrier::Messagebird as i32,
                    carrier_message_id: p.id.unwrap_or_default(),
                    from: p.originator.unwrap_or_default(),
                    to: p.recipient.into_iter().collect(),
                    text: p.body.unwrap_or_default(),
                    carrier_time: p.created_datetime.unwrap_or_default(),
                    context,
                    ..Default::default()
                })
            }
        };
        Ok(vec![event])
    }

    fn accepted(message_id: &str) -> Response {
        accepted_with_id(message_id, None)
    }
}
