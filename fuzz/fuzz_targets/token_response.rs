#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::token_response(data));
