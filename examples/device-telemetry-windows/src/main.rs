//! Lambda entry point of the tumbling-window consumer: readings folded
//! into per-device totals per window, each window's totals written once to
//! `DEVICES_TABLE`.

use device_telemetry::{fold, totals};

fn main() -> Result<(), shared::Error> {
    let devices = shared::config::required("DEVICES_TABLE")?;
    shared::Function::new("device-telemetry-windows").kinesis_window(fold, move |closed| totals(&devices, closed))
}
