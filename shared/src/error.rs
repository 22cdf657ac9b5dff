//! The one classification of failures into transient (retry), permanent
//! (quarantine) and fatal (fail the invocation) that every layer uses.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

pub use shared_core::error::{Classify, ErrorClass, classify_code};

/// Classifies any AWS SDK error: timeouts, dispatch failures (connection
/// refused or reset) and unparseable responses are transient; service errors
/// by [`classify_code`]; a request the SDK could not even build is permanent.
pub fn classify_sdk<E: ProvideErrorMetadata, R: HttpStatus>(err: &SdkError<E, R>) -> ErrorClass {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => ErrorClass::Transient,
        SdkError::ServiceError(service) => classify_code(service.err().code(), Some(service.raw().status_code())),
        SdkError::ConstructionFailure(_) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// The HTTP status of a raw response (implemented for the SDK's response type).
pub trait HttpStatus {
    /// The response's HTTP status code.
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A readable message of an SDK error: code and message, not just "service error".
pub fn sdk_message<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    err: &SdkError<E, R>,
) -> String {
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => e.to_string(),
            }
        }
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_faults_are_transient() {
        for code in ["ProvisionedThroughputExceededException", "ThrottlingException", "InternalServerError"] {
            assert_eq!(classify_code(Some(code), Some(400)), ErrorClass::Transient, "{code}");
        }
        assert_eq!(classify_code(Some("Whatever"), Some(503)), ErrorClass::Transient);
        assert_eq!(classify_code(None, Some(500)), ErrorClass::Transient);
        assert_eq!(classify_code(None, Some(429)), ErrorClass::Transient);
    }

    #[test]
    fn missing_resources_are_fatal_and_bad_requests_permanent() {
        assert_eq!(classify_code(Some("ResourceNotFoundException"), Some(400)), ErrorClass::Fatal);
        assert_eq!(classify_code(Some("ValidationException"), Some(400)), ErrorClass::Permanent);
        assert_eq!(classify_code(Some("SerializationException"), Some(400)), ErrorClass::Permanent);
    }
}
