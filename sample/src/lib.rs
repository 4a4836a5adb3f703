//! `cutover-sample`, the service the demo and the system tests roll out:
//! an HTTP service ([`http`]) and an implementation on PostgreSQL of the
//! data migration protocol of `docs/data-migrations.md`
//! ([`data_migrate`]), with one migration, `backfill_prices`
//! ([`backfill`], [`verify`]), whose progress is kept in the service's
//! own database ([`checkpoint`]). The HTTP path uses the standard library
//! only; a tokio runtime exists only inside `data-migrate` and, for a
//! release with a `SHAPE` file, to serve its orders ([`orders`]).

pub mod backfill;
pub mod checkpoint;
pub mod data_migrate;
pub mod db;
pub mod error;
pub mod http;
pub mod orders;
pub mod verify;
