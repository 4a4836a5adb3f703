//! What runs and watches a service on this host: the process and systemd
//! runners, the Docker engine, and the health checks.

pub mod docker;
pub mod health;
pub mod runner;
