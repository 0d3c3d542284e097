//! Twilio Programmable Messaging: form-encoded inbound messages and status callbacks (POST, or
//! GET with query parameters when the webhook is configured for GET).

use std::collections::HashMap;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use carrier_ingest::v1::{
    Carrier, CarrierContext, DeliveryStatus, InboundMessage, Media, batch_event::Event,
};

use super::{Webhook, extras, invalid, parse_count, require_content_type};
use crate::{
    auth::{Verified, Verifier},
    config::Verifiers,
    error::EdgeError,
};

/// The empty TwiML document Twilio expects when we have nothing to say.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response></Response>";

/// Most media items Twilio attaches to one message.
const MAX_MEDIA: usize = 10;

/// The Twilio webhook.
#[derive(Debug, Clone, Copy)]
pub struct Twilio;

/// Decoded form parameters; the first value wins for repeated names.
pub fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, EdgeError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|_| EdgeError::Malformed("invalid form encoding".to_owned()))
}

impl Webhook for Twilio {
    const NAME: &'static str = "twilio";
    const CARRIER: Carrier = Carrier::Twilio;

    fn verifier(verifiers: &Verifiers) -> &dyn Verifier {
        verifiers.twilio.as_ref()
    }

    fn parse(request: &Verified<'_>) -> Result<Vec<Event>, EdgeError> {
        let req = request.request();
        // Twilio calls a webhook configured for HTTP GET with the parameters in the query.
        let pairs = if req.method == http::Method::GET {
            form_params(req.raw_query().as_bytes())?
        } else {
            require_content_type(req, "application/x-www-form-urlencoded")?;
            form_params(&req.body)?
        };
        let mut p: HashMap<&str, &str> = HashMap::with_capacity(pairs.len());
        for (k, v) in &pairs {
            p.entry(k.as_str()).or_insert(v.as_str());
        }
        let get = |k: &str| p.get(k).map(|v| (*v).to_owned());
        let sid = get("MessageSid")
            .or_else(|| get("SmsMessageSid"))
            .or_else(|| get("SmsSid"));
        if sid.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("MessageSid", "is required"));
        }
        if get("AccountSid").as_deref().is_none_or(str::is_empty) {
            return Err(invalid("AccountSid", "is required"));
        }
        let context = |keys: &[&'static str]| {
            Some(CarrierContext {
                account_id: get("AccountSid").unwrap_or_default(),
                messaging_service_id: get("MessagingServiceSid").unwrap_or_default(),
                extras: extras(keys.iter().map(|k| (*k, get(k)))),
                ..Default::default()
            })
        };
        // A status callback carries MessageStatus; older ones only SmsStatus. An inbound message
        // has SmsStatus=received (or none).
        let raw_status =
            get("MessageStatus").or_else(|| get("SmsStatus").filter(|s| s != "received"));
        let event = match raw_status {
            Some(raw_status) => Event::Status(DeliveryStatus {
                carrier: Carrier::Twilio as i32,
                carrier_message_id: sid.unwrap_or_default(),
                raw_status,
                error_code: get("ErrorCode").unwrap_or_default(),
                error_description: get("ErrorMessage").unwrap_or_default(),
                recipient: get("To").unwrap_or_default(),
                sender: get("From").unwrap_or_default(),
                status_time: get("RawDlrDoneDate").unwrap_or_default(),
                segment_count: parse_count(get("NumSegments").as_deref()),
                context: context(&["ApiVersion", "SmsStatus", "ChannelPrefix"]),
                ..Default::default()
            }),
            None => {
                let num_media = parse_count(get("NumMedia").as_deref()).unwrap_or(0) as usize;
                let media = (0..num_media.min(MAX_MEDIA))
                    .filter_map(|n| {
                        get(&format!("MediaUrl{n}")).map(|url| Media {
                            url,
                            content_type: get(&format!("MediaContentType{n}")).unwrap_or_default(),
                            size_bytes: None,
                        })
                    })
                    .collect();
                Event::Inbound(InboundMessage {
                    carrier: Carrier::Twilio as i32,
                    carrier_message_id: sid.unwrap_or_default(),
                    from: get("From").unwrap_or_default(),
                    to: get("To").into_iter().collect(),
                    text: get("Body").unwrap_or_default(),
                    media,
                    segment_count: parse_count(get("NumSegments").as_deref()),
                    carrier_time: String::new(),
                    context: context(&[
                        "ApiVersion",
                        "SmsStatus",
                        "FromCity",
                        "FromState",
                        "FromZip",
                        "FromCountry",
                        "ToCity",
                        "ToState",
                        "ToZip",
                        "ToCountry",
                        "ChannelPrefix",
                    ]),
                })
            }
        };
        Ok(vec![event])
    }

    fn accepted(_message_id: &str) -> Response {
        ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
    }
}
