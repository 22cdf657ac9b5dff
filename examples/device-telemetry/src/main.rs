//! Lambda entry point: the devices table from the environment
//! (`DEVICES_TABLE`, key `device`), then the toolkit's Kinesis consumer,
//! which reads `IDEMPOTENCY_TABLE`, `QUARANTINE_TABLE` and its optional settings.

fn main() -> Result<(), shared::Error> {
    let devices = shared::config::required("DEVICES_TABLE")?;
    shared::kinesis("device-telemetry", move |r| device_telemetry::count(&devices, r))
}
