//! What the controller's unit tests share: a real controller on a fresh
//! data directory, with its own PKI and release key, serving nothing.

use std::sync::Arc;

use crate::Controller;

/// A controller on a fresh data directory, with its own PKI and key.
pub(crate) fn controller(dir: &std::path::Path) -> Arc<Controller> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    cutover_core::pki::init(&cutover_core::pki::InitOptions {
        dir: &pki,
        controller_hosts: &["127.0.0.1".to_string()],
        operator_name: "op",
    })
    .unwrap();
    cutover_core::signing::keygen(&dir.join("release")).unwrap();
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"data\"\n[tls]\nca_cert = \"pki/ca.pem\"\nca_key = \"pki/ca-key.pem\"\ncert = \"pki/controller.pem\"\nkey = \"pki/controller-key.pem\"\n[releases]\ntrusted_keys = [\"release.pub\"]\n",
    )
    .unwrap();
    Controller::open(crate::Config::load(&config).unwrap()).unwrap()
}
