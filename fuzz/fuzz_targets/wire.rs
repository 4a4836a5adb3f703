//! The protobuf-to-domain conversions at the edge: any bytes decode to an
//! error or to a message whose conversion either refuses it or round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

use cutover_core::rollout::{Command, Report};
use cutover_core::views::{DiagReport, HostView, InstalledService, ReleaseView};
use cutover_proto::v1;

fn check<W, D>(bytes: &[u8])
where
    W: Message + Default + for<'a> From<&'a D>,
    D: TryFrom<W>,
{
    if let Ok(wire) = W::decode(bytes) {
        if let Ok(domain) = D::try_from(wire) {
            let _again: W = W::from(&domain);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => check::<v1::Report, Report>(bytes),
        1 => check::<v1::Command, Command>(bytes),
        2 => check::<v1::InstalledService, InstalledService>(bytes),
        3 => check::<v1::DiagReport, DiagReport>(bytes),
        4 => check::<v1::Host, HostView>(bytes),
        _ => check::<v1::Release, ReleaseView>(bytes),
    }
});
