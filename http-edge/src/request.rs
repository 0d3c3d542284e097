//! What every request gets before its handler: an `X-Request-Id` (the caller's, when it is a
//! short safe token, else a new one) echoed on the reply whatever its status, and a span that
//! continues the caller's W3C trace context (or starts a trace). Its trace id and the request id
//! are fields of a `tracing` span entered for the whole request, so every log line of the
//! request carries both; the handler passes the span's context on to the core.

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::Response,
};
use ingest_core::trace::{self, Scope, SpanContext, TRACEPARENT, TRACESTATE};
use tracing::Instrument;

/// The request id header, in requests and replies.
pub const X_REQUEST_ID: &str = "x-request-id";
/// Longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The edge span of a request, for the handler to pass on to the core.
#[derive(Debug, Clone)]
pub struct EdgeSpan(pub SpanContext);

/// The caller's request id when it is 1 to [`MAX_REQUEST_ID_LEN`] characters of
/// `A-Z a-z 0-9 - _ . : / + = @` (UUIDs, ULIDs, base64 and most proxies' ids), else a new one:
/// 32 random hex digits. Anything else could forge or break log lines, so it is replaced.
pub fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = given
        && (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value.as_bytes().iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@')
        })
    {
        return value.clone();
    }
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut hex);
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Probes and the API document: no span, no log lines to carry one.
fn untraced(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/openapi.json")
}

/// The edge span when it is exported: named `METHOD /route` with the HTTP attributes (work
/// that is skipped when export is off).
fn exported_span(request: &Request, parent: Option<SpanContext>) -> trace::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let method = request.method().as_str();
    let mut span = trace::Span::start(
        Scope::Edge,
        || match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        },
        parent,
    );
    span.set_attribute("http.request.method", method.to_owned());
    if let Some(route) = route {
        span.set_attribute("http.route", route.to_owned());
    }
    span
}

/// The middleware (`axum::middleware::from_fn`) around every route.
pub async fn context(mut request: Request, next: Next) -> Response {
    let request_id = request_id(request.headers().get(X_REQUEST_ID));
    if untraced(request.uri().path()) {
        let mut response = next.run(request).await;
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        return response;
    }
    let headers = request.headers();
    let parent = trace::parse(header(headers, TRACEPARENT), header(headers, TRACESTATE));
    let mut span = if trace::exporting() {
        exported_span(&request, parent)
    } else {
        trace::Span::start(Scope::Edge, || "", parent)
    };
    let log = tracing::info_span!(
        "request",
        trace_id = %span.trace_id(),
        request_id = %request_id.to_str().unwrap_or_default(),
    );
    request
        .extensions_mut()
        .insert(EdgeSpan(span.context().clone()));
    let mut response = next.run(request).instrument(log).await;
    let status = response.status();
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_error(status.canonical_reason().unwrap_or("server error"));
    }
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_request_ids_are_kept_and_others_replaced() {
        for kept in [
            "req-1",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "Root=1-67891233-abcdef012345678912345678",
            "a+b/c=d@e:f_g.h",
            &"x".repeat(MAX_REQUEST_ID_LEN),
        ] {
            let v = HeaderValue::from_str(kept).unwrap();
            assert_eq!(request_id(Some(&v)), kept);
        }
        for replaced in [
            "",
            "has space",
            "semi;colon",
            "quote\"",
            "new\tline",
            &"x".repeat(MAX_REQUEST_ID_LEN + 1),
        ] {
            let v = HeaderValue::from_str(replaced).unwrap();
            let id = request_id(Some(&v));
            assert_ne!(id, replaced);
            assert_eq!(id.len(), 32, "{replaced:?}");
        }
        let non_ascii = HeaderValue::from_bytes("ünïcode".as_bytes()).unwrap();
        assert_eq!(request_id(Some(&non_ascii)).len(), 32);
        let a = request_id(None);
        let b = request_id(None);
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
