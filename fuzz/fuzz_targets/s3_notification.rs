#![no_main]

libfuzzer_sys::fuzz_target!(init: harness::init_from_env(), |data: &[u8]| harness::s3_notification(data));
