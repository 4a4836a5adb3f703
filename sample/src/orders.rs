//! The orders the service keeps, in the table layout of its release's
//! `SHAPE` file: `A` (release A: prices in `orders.doc`), `B` (release B,
//! after the expand: prices written to both `orders.doc` and
//! `order_prices`, read from `orders.doc`, which the backfill has not yet
//! finished copying) or `C` (after the contract: prices in `order_prices`
//! only). `GET /orders/total` answers the total price;
//! `POST /orders/ID?price_cents=N` writes one order's price. A release
//! without `SHAPE` serves no orders and never touches a database.
//!
//! Each request makes its own connection on a current-thread runtime the
//! server makes once, so the HTTP server itself stays the standard
//! library's, one request at a time.

use std::ffi::OsString;

use crate::db::{describe, Database};
use crate::error::{Error, Result};

/// The table layout a release uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    A,
    B,
    C,
}

impl Shape {
    /// The shape a `SHAPE` file's text names (`None`: empty, no orders).
    pub fn parse(text: &str) -> std::result::Result<Option<Shape>, String> {
        match text.trim() {
            "" => Ok(None),
            "A" => Ok(Some(Shape::A)),
            "B" => Ok(Some(Shape::B)),
            "C" => Ok(Some(Shape::C)),
            other => Err(format!(
                "SHAPE says {:?}; it must say A, B or C",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// The orders of a release of shape `shape` in `database`.
pub struct Orders {
    shape: Shape,
    database: Database,
    runtime: tokio::runtime::Runtime,
}

/// A request for the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Total,
    Set { id: i64, price_cents: i64 },
}

impl Request {
    /// The orders request `method` `target` is, if it is one; `Err` is a
    /// bad request's reason.
    pub fn parse(method: &str, target: &str) -> Option<std::result::Result<Request, String>> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if method == "GET" && path == "/orders/total" {
            return Some(Ok(Request::Total));
        }
        let id = path.strip_prefix("/orders/")?;
        if method != "POST" {
            return Some(Err(format!("{method} {path}: only POST writes an order")));
        }
        let Ok(id) = id.parse::<i64>() else {
            return Some(Err("the order id is not a number".into()));
        };
        let price = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("price_cents="))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|p| *p >= 0);
        Some(match price {
            Some(price_cents) => Ok(Request::Set { id, price_cents }),
            None => Err("give ?price_cents=N, a whole number of cents from 0".into()),
        })
    }
}

impl Orders {
    /// The orders of a release of `shape`, in the database the
    /// environment names.
    pub fn new(shape: Shape, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Orders> {
        let database = Database::from_env(env)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Database(format!("cannot start the async runtime: {e}")))?;
        Ok(Orders {
            shape,
            database,
            runtime,
        })
    }

    /// Answers `request`: the body of a `200`, or why it failed.
    pub fn answer(&self, request: Request) -> Result<String> {
        self.runtime.block_on(self.serve(request))
    }

    async fn serve(&self, request: Request) -> Result<String> {
        let mut client = self.database.connect().await?;
        let failed = |e: tokio_postgres::Error| Error::Database(describe(&e));
        match request {
            Request::Total => {
                let sql = match self.shape {
                    Shape::A | Shape::B => {
                        "SELECT coalesce(sum((doc->>'price_cents')::bigint), 0)::text FROM orders"
                    }
                    Shape::C => "SELECT coalesce(sum(price_cents), 0)::text FROM order_prices",
                };
                let row = client.query_one(sql, &[]).await.map_err(failed)?;
                Ok(format!("{}\n", row.get::<_, String>(0)))
            }
            Request::Set { id, price_cents } => {
                let tx = client.transaction().await.map_err(failed)?;
                if matches!(self.shape, Shape::A | Shape::B) {
                    tx.execute(
                        "INSERT INTO orders (id, doc) VALUES ($1, jsonb_build_object('price_cents', $2::bigint)) \
                         ON CONFLICT (id) DO UPDATE SET doc = orders.doc || EXCLUDED.doc",
                        &[&id, &price_cents],
                    )
                    .await
                    .map_err(failed)?;
                }
                if matches!(self.shape, Shape::B | Shape::C) {
                    tx.execute(
                        "INSERT INTO order_prices (order_id, price_cents) VALUES ($1, $2) \
                         ON CONFLICT (order_id) DO UPDATE SET price_cents = EXCLUDED.price_cents",
                        &[&id, &price_cents],
                    )
                    .await
                    .map_err(failed)?;
                }
                tx.commit().await.map_err(failed)?;
                Ok("ok\n".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_a_b_or_c_and_an_empty_file_is_none() {
        assert_eq!(Shape::parse("B\n"), Ok(Some(Shape::B)));
        assert_eq!(Shape::parse(""), Ok(None));
        assert!(Shape::parse("D").unwrap_err().contains("A, B or C"));
    }

    #[test]
    fn orders_requests_parse_and_others_are_not_ours() {
        assert_eq!(
            Request::parse("GET", "/orders/total"),
            Some(Ok(Request::Total))
        );
        assert_eq!(
            Request::parse("POST", "/orders/42?price_cents=1999"),
            Some(Ok(Request::Set {
                id: 42,
                price_cents: 1999
            }))
        );
        assert!(matches!(Request::parse("POST", "/orders/42"), Some(Err(_))));
        assert!(matches!(
            Request::parse("POST", "/orders/x?price_cents=1"),
            Some(Err(_))
        ));
        assert!(matches!(
            Request::parse("POST", "/orders/1?price_cents=-1"),
            Some(Err(_))
        ));
        assert!(matches!(
            Request::parse("GET", "/orders/1?price_cents=1"),
            Some(Err(_))
        ));
        assert_eq!(Request::parse("GET", "/healthz"), None);
        assert_eq!(Request::parse("GET", "/"), None);
    }
}
