#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::github_webhook(data));
