//! Every way a webhook call can fail, mapped to one HTTP status and a JSON body that never
//! carries internal detail. gRPC codes from the core map to HTTP in one table.

use axum::{
    Json,
    http::{HeaderName, HeaderValue, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;

use crate::auth::AuthError;

/// One field problem, safe to show to the caller (names a field, never echoes its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldViolation {
    /// Path of the field, e.g. `message.from`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Why a webhook call was not taken.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Authenticity check failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body is not of the content type this endpoint takes.
    #[error("unsupported content type; expected {expected}")]
    UnsupportedMediaType {
        /// The content type expected.
        expected: &'static str,
    },
    /// The body exceeds the configured limit.
    #[error("request body too large")]
    TooLarge,
    /// The body is malformed (not JSON, not a form, wrong shape).
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body is well-formed but fields are missing or invalid.
    #[error("invalid event")]
    Invalid(Vec<FieldViolation>),
    /// This client sent more calls than its rate limit allows (429 with `Retry-After`).
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        /// Whole seconds until the client may call again (at least 1).
        retry_after_secs: u64,
    },
    /// The call came from an address outside this carrier's source allowlist (403).
    #[error("source address not allowed for this carrier")]
    SourceNotAllowed,
    /// The core answered with an error, or could not be reached.
    #[error("core call failed: {code:?}")]
    Core {
        /// The gRPC code (Unavailable when unreachable).
        code: Code,
    },
}

/// Seconds a 503 asks the caller to wait: long enough for a shed burst or a core restart to pass,
/// short against the carriers' own retry schedules (which they may follow instead).
pub const RETRY_AFTER_SECS: u64 = 5;

/// The `Retry-After` header every 503 carries.
pub fn retry_after() -> (HeaderName, HeaderValue) {
    (RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS))
}

/// The HTTP status for a failed core call's gRPC code: one table, no catch-all. Anything that is
/// not the caller's fault is a 5xx, so the carrier retries.
pub fn http_status_for(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        // An error that claims OK is a broken reply: never a 2xx for an event not known durable.
        Code::Ok
        | Code::Unknown
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl EdgeError {
    /// The HTTP status, with `invalid` used for field validation failures (Inteliquent: 422).
    pub fn status(&self, invalid: StatusCode) -> StatusCode {
        match self {
            Self::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Auth(
                AuthError::Missing(_) | AuthError::Invalid(_) | AuthError::NotConfigured,
            ) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => invalid,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::SourceNotAllowed => StatusCode::FORBIDDEN,
            Self::Core { code } => http_status_for(*code),
        }
    }

    /// For a call that passed authentication, whether this error means it cannot become events
    /// (so it is quarantined), and under which reason. Failures on our side are not: the carrier
    /// retries those.
    pub fn quarantine_reason(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(_) | Self::Invalid(_) | Self::UnsupportedMediaType { .. } => {
                Some(self.kind())
            }
            // Refused before verification, or our own failure.
            Self::Auth(_)
            | Self::TooLarge
            | Self::RateLimited { .. }
            | Self::SourceNotAllowed
            | Self::Core { .. } => None,
        }
    }

    /// A short machine-readable name of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth(AuthError::Forbidden(_)) => "forbidden",
            Self::Auth(_) => "unauthorized",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::TooLarge => "payload_too_large",
            Self::Malformed(_) => "malformed_request",
            Self::Invalid(_) => "invalid_request",
            Self::RateLimited { .. } => "rate_limited",
            Self::SourceNotAllowed => "forbidden",
            Self::Core { .. } => "unavailable",
        }
    }

    /// The JSON error reply.
    pub fn into_response_with(self, invalid: StatusCode) -> Response {
        let status = self.status(invalid);
        let error = self.kind();
        let message = match &self {
            // The auth reason is logged, not told to a possible forger.
            Self::Auth(AuthError::Forbidden(_)) => "authorization failed".to_owned(),
            Self::Auth(_) => "missing or invalid authentication".to_owned(),
            Self::Core { .. } if status.is_server_error() => {
                "temporarily unable to take this event; retry later".to_owned()
            }
            Self::Core { .. } => "the event was rejected".to_owned(),
            Self::RateLimited { .. } => "too many requests; retry later".to_owned(),
            other => other.to_string(),
        };
        let retry_after_secs = match &self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let violations = match self {
            Self::Invalid(v) => v,
            _ => Vec::new(),
        };
        let body = ErrorBody {
            success: false,
            error,
            message,
            violations,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after_secs {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            let (name, value) = retry_after();
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    success: bool,
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    violations: Vec<FieldViolation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_maps_and_only_caller_faults_are_4xx() {
        let all = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in all {
            let status = http_status_for(code);
            let caller_fault = matches!(code, Code::InvalidArgument | Code::OutOfRange);
            assert_eq!(status.is_client_error(), caller_fault, "{code:?}");
            if !caller_fault {
                assert!(
                    status.is_server_error(),
                    "{code:?} must make carriers retry"
                );
            }
        }
        assert_eq!(
            http_status_for(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn invalid_status_is_per_carrier_and_auth_splits_401_403() {
        let e = EdgeError::Invalid(vec![]);
        assert_eq!(
            e.status(StatusCode::UNPROCESSABLE_ENTITY),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            EdgeError::Auth(AuthError::Forbidden("x")).status(StatusCode::BAD_REQUEST),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            EdgeError::Auth(AuthError::NotConfigured).status(StatusCode::BAD_REQUEST),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn abuse_rejections_are_429_with_retry_after_and_403() {
        let r = EdgeError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response_with(StatusCode::BAD_REQUEST);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "3");
        let r = EdgeError::SourceNotAllowed.into_response_with(StatusCode::BAD_REQUEST);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get(http::header::RETRY_AFTER).is_none());
    }
}
