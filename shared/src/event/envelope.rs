//! Envelopes other services put around a payload: SNS notifications (as
//! delivered to Lambda, or as an SQS message body) and EventBridge events.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sns::SnsMessage;
use serde_json::Value;

use super::{EventError, json_error};

/// The SNS notification in an SNS-to-Lambda record (`{"Sns": {...}}`) or an
/// SNS-to-SQS message body (the notification itself).
pub fn sns_message(value: &Value) -> Result<SnsMessage, EventError> {
    let inner = value.get("Sns").unwrap_or(value);
    if inner.get("Message").is_none() {
        return Err(EventError::MissingField { what: "SNS notification", field: "Message" });
    }
    serde_json::from_value(inner.clone()).map_err(|e| json_error("SNS notification", e))
}

/// True when the value looks like an SNS notification (either delivery).
pub fn is_sns(value: &Value) -> bool {
    value.get("Sns").is_some()
        || (value.get("Type").and_then(Value::as_str) == Some("Notification") && value.get("Message").is_some())
}

/// An EventBridge event with its detail left as JSON.
pub fn eventbridge(value: &Value) -> Result<EventBridgeEvent<Value>, EventError> {
    serde_json::from_value(value.clone()).map_err(|e| json_error("EventBridge event", e))
}
