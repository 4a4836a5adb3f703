//! The `docker save` reader that finds the image ID a tarball carries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cutover_core::image::image_id(data);
});
