//! The release manifest parser and the signature file parser: any text is
//! refused with an error or gives a manifest whose derived views work.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = cutover_core::manifest::Manifest::parse(text) {
        let _ = manifest.levels();
        let _ = manifest.artifacts();
    }
    let _ = cutover_core::signing::SignatureFile::parse(text);
});
