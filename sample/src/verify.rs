//! `verify backfill_prices`: read-only checks, in one repeatable-read
//! snapshot, that every order's price is in `order_prices` and equal to
//! the one in `orders.doc`: row counts, orders without a price, the price
//! totals (exact decimals) and the prices that differ. It passes only
//! when every check does and the migration has succeeded.

use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel};

use crate::backfill::{self, ID, LOCK_KEY, WITHOUT_PRICE};
use crate::checkpoint::{self, failed, State};
use crate::error::{Error, Result};

/// One check: what should be there and what is, as exact decimals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

impl Check {
    fn new(name: &'static str, expected: String, actual: String) -> Check {
        let ok = expected == actual;
        Check {
            name,
            expected,
            actual,
            ok,
        }
    }
}

/// What `verify` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verify {
    pub id: &'static str,
    pub state: State,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Verify {
    pub fn new(id: &'static str, state: State, checks: Vec<Check>) -> Verify {
        let ok = state == State::Succeeded && !checks.is_empty() && checks.iter().all(|c| c.ok);
        Verify {
            id,
            state,
            ok,
            checks,
        }
    }
}

/// The figures the checks compare, as PostgreSQL prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub orders: String,
    pub prices: String,
    pub without_price: String,
    pub doc_total: String,
    pub price_total: String,
    pub differing: String,
}

impl Figures {
    pub fn checks(self) -> Vec<Check> {
        vec![
            Check::new("rows", self.orders, self.prices),
            Check::new("orders without a price", "0".into(), self.without_price),
            Check::new("price total", self.doc_total, self.price_total),
            Check::new("prices that differ", "0".into(), self.differing),
        ]
    }
}

/// Reads the figures and the state, and checks them.
pub async fn verify(client: &mut Client) -> Result<Verify> {
    backfill::tables(client).await.map_err(Error::Database)?;
    let doing = "cannot read the figures to verify";
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(failed(doing))?;
    let sql = format!(
        "SELECT (SELECT count(*) FROM orders)::text, \
                (SELECT count(*) FROM order_prices)::text, \
                ({WITHOUT_PRICE})::text, \
                (SELECT coalesce(sum((doc->>'price_cents')::bigint), 0) FROM orders)::text, \
                (SELECT coalesce(sum(price_cents), 0) FROM order_prices)::text, \
                (SELECT count(*) FROM orders o JOIN order_prices p ON p.order_id = o.id \
                  WHERE p.price_cents IS DISTINCT FROM (o.doc->>'price_cents')::bigint)::text"
    );
    let row = tx.query_one(&sql, &[]).await.map_err(failed(doing))?;
    let figures = Figures {
        orders: row.get(0),
        prices: row.get(1),
        without_price: row.get(2),
        doc_total: row.get(3),
        price_total: row.get(4),
        differing: row.get(5),
    };
    let status = checkpoint::status(&tx, ID, LOCK_KEY).await?;
    tx.commit().await.map_err(failed(doing))?;
    Ok(Verify::new(ID, status.state, figures.checks()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            orders: "5000".into(),
            prices: "5000".into(),
            without_price: "0".into(),
            doc_total: "123456".into(),
            price_total: "123456".into(),
            differing: "0".into(),
        }
    }

    #[test]
    fn verify_passes_only_with_every_check_and_a_succeeded_state() {
        assert!(Verify::new(ID, State::Succeeded, figures().checks()).ok);
        assert!(!Verify::new(ID, State::Running, figures().checks()).ok);
        assert!(!Verify::new(ID, State::Succeeded, vec![]).ok);
    }

    #[test]
    fn a_tampered_price_fails_the_total_and_the_differing_checks() {
        let mut f = figures();
        f.price_total = "123457".into();
        f.differing = "1".into();
        let v = Verify::new(ID, State::Succeeded, f.checks());
        assert!(!v.ok);
        let failing: Vec<_> = v.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(failing, ["price total", "prices that differ"]);
        let doc = serde_json::to_value(&v).unwrap();
        assert_eq!(doc["checks"][2]["expected"], "123456");
        assert_eq!(doc["state"], "succeeded");
    }
}
