#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::slack_webhook(data));
