//! One module per carrier: how its webhook bodies become events, and what it expects back.
//! Routing, limits, verification and error mapping are written once, in `app.rs`.

pub mod bandwidth;
pub mod inteliquent;
pub mod messagebird;
pub mod twilio;

use std::collections::HashMap;

use axum::{Json, response::IntoResponse};
use axum::{http::StatusCode, response::Response};
use carrier_ingest::v1::batch_event::Event;
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::{
    auth::{Incoming, Verified, Verifier},
    config::Verifiers,
    error::{EdgeError, FieldViolation},
};

/// Most events accepted in one call (the core's batch limit).
pub const MAX_EVENTS_PER_CALL: usize = 100;

/// A carrier's webhook format.
pub trait Webhook: Send + Sync + 'static {
    /// Carrier name for logs and metrics.
    const NAME: &'static str;
    /// The carrier, for quarantine records.
    const CARRIER: carrier_ingest::v1::Carrier;
    /// Status for a well-formed body with invalid fields.
    const INVALID_STATUS: StatusCode = StatusCode::BAD_REQUEST;
    /// This carrier's verifier.
    fn verifier(verifiers: &Verifiers) -> &dyn Verifier;
    /// Turns a verified call into events (at least one).
    fn parse(request: &Verified<'_>) -> Result<Vec<Event>, EdgeError>;
    /// The success reply the carrier expects, once every event is durable; `message_id` is the
    /// carrier message id of the call's first event.
    fn accepted(message_id: &str) -> Response;
}

/// Runs the named carrier's parser (`bandwidth`, `twilio`, `messagebird`, `inteliquent`) over a
/// verified call; `None` for a name that is no carrier of ours.
pub fn parse_for(carrier: &str, request: &Verified<'_>) -> Option<Result<Vec<Event>, EdgeError>> {
    Some(match carrier {
        bandwidth::Bandwidth::NAME => bandwidth::Bandwidth::parse(request),
        twilio::Twilio::NAME => twilio::Twilio::parse(request),
        messagebird::MessageBird::NAME => messagebird::MessageBird::parse(request),
        inteliquent::Inteliquent::NAME => inteliquent::Inteliquent::parse(request),
        _ => return None,
    })
}

/// The carrier message id of an event, for replies and logs.
pub fn message_id(event: &Event) -> &str {
    match event {
        Event::Inbound(m) => &m.carrier_message_id,
        Event::Status(s) => &s.carrier_message_id,
    }
}

/// The JSON success body `{"success":true,"messageId":…[,"status":…]}`, fields in the spec's
/// order (MessageBird, Inteliquent).
pub fn accepted_with_id(message_id: &str, status: Option<&'static str>) -> Response {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Accepted<'a> {
        success: bool,
        message_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'static str>,
    }
    Json(Accepted {
        success: true,
        message_id,
        status,
    })
    .into_response()
}

/// Fails unless the body's media type (parameters ignored) is `expected`.
pub fn require_content_type(req: &Incoming, expected: &'static str) -> Result<(), EdgeError> {
    let given = req.header("content-type").unwrap_or("");
    let media_type = given.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(EdgeError::UnsupportedMediaType { expected })
    }
}

/// Parses a JSON body, reporting a syntax or shape error without echoing the body.
pub fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, EdgeError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "unexpected JSON shape",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "invalid JSON",
        };
        // Errors from inside an `Obj` carry no position (line 0): say nothing rather than 0:0.
        if e.line() == 0 {
            EdgeError::Malformed(what.to_owned())
        } else {
            EdgeError::Malformed(format!("{what} at line {} column {}", e.line(), e.column()))
        }
    })
}

/// A JSON object deserialized into `T`. serde's derived structs also take a JSON array, field by
/// field in order (`["id", "+1555…"]`); a carrier never sends that, so it is refused as malformed
/// rather than taken as an event. The object's fields go straight into `T`, with no
/// intermediate JSON value.
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly(std::marker::PhantomData))
            .map(Obj)
    }
}

/// A single violation.
pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> EdgeError {
    EdgeError::Invalid(vec![FieldViolation {
        field: field.into(),
        description: description.into(),
    }])
}

/// Deserializes a string, number or boolean as text; null or absent as `None`.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_json::Value;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(D::Error::custom("expected a string or number")),
    }
}

/// A JSON number that is a whole, non-negative value (`7` or `7.0`: JSON does not tell them
/// apart, and neither does JSON Schema's `integer`), as `u64`.
fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            // 2^64 as f64; anything at or above does not fit.
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| f as u64)
    })
}

/// Deserializes a sender or recipient: text, or a whole number (MessageBird sends numbers
/// without `+` as JSON numbers) as its digits; null or absent as `None`. Anything else (a
/// fraction, a negative number, a boolean) is no phone number and is refused here, rather than
/// taken as text such as `1.5e20` and then kept as an alphanumeric sender id.
pub fn opt_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_json::Value;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => address_text(v).map(Some),
    }
}

/// Deserializes one address or an array of them (see [`opt_address`]); null or absent as empty.
pub fn address_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde_json::Value;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.into_iter().map(address_text).collect(),
        Some(v) => Ok(vec![address_text(v)?]),
    }
}

fn address_text<E: serde::de::Error>(v: serde_json::Value) -> Result<String, E> {
    match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => whole_number(&n)
            .map(|n| n.to_string())
            .ok_or_else(|| E::custom("expected a phone number as text or a whole number")),
        _ => Err(E::custom(
            "expected a phone number as text or a whole number",
        )),
    }
}

/// Deserializes a whole, non-negative number (`7` or `7.0`); null or absent as `None`.
pub fn opt_whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde_json::Value;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => whole_number(&n)
            .map(Some)
            .ok_or_else(|| D::Error::custom("expected a whole, non-negative number")),
        Some(_) => Err(D::Error::custom("expected a whole, non-negative number")),
    }
}

/// Deserializes one string or an array of them; null or absent as empty.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde_json::Value;
    let text = |v: Value| match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(D::Error::custom("expected a string or number")),
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.into_iter().map(text).collect(),
        Some(v) => Ok(vec![text(v)?]),
    }
}

/// Deserializes media as URL strings or as objects carrying one (`url`, `mediaUrl`, `href`),
/// since carriers have sent both; null or absent as empty.
pub fn url_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde_json::Value;
    let url = |v: Value| match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Object(o) => ["url", "mediaUrl", "href"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| D::Error::custom("a media object needs a url")),
        _ => Err(D::Error::custom("expected a URL or a media object")),
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.into_iter().map(url).collect(),
        Some(v) => Ok(vec![url(v)?]),
    }
}

/// Non-empty carrier fields kept as `CarrierContext.extras`.
pub fn extras<'a>(
    fields: impl IntoIterator<Item = (&'a str, Option<String>)>,
) -> HashMap<String, String> {
    fields
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k.to_owned(), v)))
        .collect()
}

/// A number of segments or media, tolerating text.
pub fn parse_count(value: Option<&str>) -> Option<u32> {
    value.and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::incoming;

    #[test]
    fn content_type_ignores_parameters_and_case() {
        let ok = incoming(
            "/",
            &[("content-type", "Application/JSON; charset=utf-8")],
            b"",
        );
        assert!(require_content_type(&ok, "application/json").is_ok());
        let bad = incoming("/", &[("content-type", "text/plain")], b"");
        assert!(require_content_type(&bad, "application/json").is_err());
        let none = incoming("/", &[], b"");
        assert!(require_content_type(&none, "application/json").is_err());
    }

    use proptest::prelude::*;

    use crate::auth::{Disabled, Verifier};

    /// Runs every carrier's parser over `body` sent with `content_type`, as POST and GET.
    fn parse_all(content_type: &str, body: &[u8], query: &str) {
        for method in [http::Method::POST, http::Method::GET] {
            let mut req = incoming(
                &format!("/x?{query}"),
                &[("content-type", content_type)],
                body,
            );
            req.method = method;
            req.destination = Some("d".into());
            let verified = Disabled.verify(&req).unwrap();
            let _ = bandwidth::Bandwidth::parse(&verified);
            let _ = twilio::Twilio::parse(&verified);
            let _ = messagebird::MessageBird::parse(&verified);
            let _ = inteliquent::Inteliquent::parse(&verified);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            parse_all("application/json", &body, "");
            parse_all("application/x-www-form-urlencoded", &body, "");
        }

        #[test]
        fn arbitrary_json_values_never_panic(
            key in "[a-zA-Z]{1,12}",
            value in prop_oneof![
                Just("null".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()), "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
            ],
        ) {
            for template in [
                format!(r#"{{"{key}":{value},"id":"a","type":"sms"}}"#),
                format!(r#"[{{"type":"message-received","{key}":{value},"message":{{"{key}":{value}}}}}]"#),
                format!(r#"{{"messageId":{value},"type":{value},"to":{value},"attachments":[{{"{key}":{value}}}]}}"#),
            ] {
                parse_all("application/json", template.as_bytes(), "");
            }
        }

        #[test]
        fn arbitrary_forms_and_queries_never_panic(pairs in proptest::collection::vec(("[A-Za-z0-9]{1,16}", "\\PC{0,16}"), 0..12)) {
            let mut pairs = pairs;
            pairs.push(("NumMedia".into(), "4294967295".into()));
            let form = serde_urlencoded::to_string(&pairs).unwrap();
            parse_all("application/x-www-form-urlencoded", form.as_bytes(), &form);
        }
    }

    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "opt_string")]
        a: Option<String>,
        #[serde(default, deserialize_with = "string_list")]
        b: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    struct Pair {
        #[serde(default, deserialize_with = "opt_string")]
        a: Option<String>,
        #[serde(default, deserialize_with = "opt_string")]
        b: Option<String>,
    }

    #[test]
    fn objects_only_where_an_object_is_expected() {
        // Found by schemathesis: `"attachments": [[null, null]]` was taken as an attachment.
        assert!(
            serde_json::from_str::<Pair>(r#"["x", "y"]"#).is_ok(),
            "serde's default"
        );
        assert!(serde_json::from_str::<Obj<Pair>>(r#"["x", "y"]"#).is_err());
        assert!(serde_json::from_str::<Vec<Obj<Pair>>>(r#"[[null, null]]"#).is_err());
        let Obj(p) = serde_json::from_str::<Obj<Pair>>(r#"{"a": "x", "b": 2}"#).unwrap();
        assert_eq!((p.a.as_deref(), p.b.as_deref()), (Some("x"), Some("2")));
        assert!(serde_json::from_str::<Obj<Pair>>(r#"{"a": {}}"#).is_err());
        let Err(EdgeError::Malformed(message)) = json_body::<Obj<Pair>>(br#"{"a": {}}"#) else {
            panic!("not malformed")
        };
        assert!(
            message.starts_with("unexpected JSON shape at line 1 column"),
            "{message}"
        );
        let Err(EdgeError::Malformed(message)) = json_body::<Obj<Pair>>(b"{\n  \"a\": ") else {
            panic!("not malformed")
        };
        assert_eq!(message, "truncated JSON at line 2 column 7");
    }

    #[derive(Deserialize)]
    struct Addresses {
        #[serde(default, deserialize_with = "opt_address")]
        one: Option<String>,
        #[serde(default, deserialize_with = "address_list")]
        many: Vec<String>,
        #[serde(default, deserialize_with = "opt_whole")]
        size: Option<u64>,
    }

    #[test]
    fn addresses_are_text_or_whole_numbers_only() {
        // Found by schemathesis: `1.78e20` used to become the "sender id" `1.7823256575694399e20`,
        // and `136954.0` the number `1369540`.
        let a: Addresses = serde_json::from_str(
            r#"{"one": 31612345678, "many": [136954.0, "+1 555"], "size": 71861.0}"#,
        )
        .unwrap();
        assert_eq!(a.one.as_deref(), Some("31612345678"));
        assert_eq!(a.many, ["136954", "+1 555"]);
        assert_eq!(a.size, Some(71861));
        let a: Addresses = serde_json::from_str(r#"{"one": null, "many": "ACME"}"#).unwrap();
        assert_eq!(
            (a.one, a.many, a.size),
            (None, vec!["ACME".to_owned()], None)
        );
        for bad in [
            r#"{"one": 178232565756943990784}"#,
            r#"{"one": 1.5}"#,
            r#"{"one": -5551234567}"#,
            r#"{"one": true}"#,
            r#"{"many": [1, false]}"#,
            r#"{"many": {}}"#,
            r#"{"size": -1}"#,
            r#"{"size": 1.5}"#,
            r#"{"size": "12"}"#,
        ] {
            assert!(serde_json::from_str::<Addresses>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars_and_lists_are_lenient() {
        let p: Probe = serde_json::from_str(r#"{"a": 31612345678, "b": "x"}"#).unwrap();
        assert_eq!(p.a.as_deref(), Some("31612345678"));
        assert_eq!(p.b, ["x"]);
        let p: Probe = serde_json::from_str(r#"{"a": null, "b": ["x", 5]}"#).unwrap();
        assert_eq!(p.a, None);
        assert_eq!(p.b, ["x", "5"]);
        assert!(serde_json::from_str::<Probe>(r#"{"a": {}}"#).is_err());
    }
}
