//! The hardened extractor over arbitrary bytes (plain or gzip tar).
#![no_main]

mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let jail = oracle::Jail::new();
    let accepted =
        cutover_agent::extract::unpack_reader(data, &jail.dest(), oracle::LIMITS).is_ok();
    jail.check(accepted);
});
