//! The fleet config parser: any text is refused with an error or gives a
//! config that validates and answers host selection for every service.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fleet) = cutover_core::fleet::FleetConfig::parse("fleet.toml", text) {
        let _ = fleet.validate();
        for name in fleet.services.keys() {
            let _ = fleet.hosts_of(name);
        }
    }
});
