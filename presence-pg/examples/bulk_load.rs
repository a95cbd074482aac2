//! Measures the bulk path: N friendships (2N directed rows) through `Store::bulk_load` into a
//! private PostgreSQL 15 (the tests' harness; fsync on), then every slot loaded back.
//!
//! `cargo run --release -p presence-pg --example bulk_load -- 1000000`

use std::time::Instant;

use presence_pg::Store;
use presence_tests::services::Postgres;

/// Friends of each user: user `a` befriends `a+1 … a+DEGREE` (mod the user count).
const DEGREE: u64 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let users = (n / DEGREE).max(2 * DEGREE + 1);
    let pg = Postgres::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::connect(&pg.url()).await?;
        let pairs = (0..n).map(|i| {
            let a = i / DEGREE;
            let b = (a + 1 + i % DEGREE) % users;
            (format!("user-{a}"), format!("user-{b}"))
        });
        let t0 = Instant::now();
        let r = store.bulk_load(pairs).await?;
        let took = t0.elapsed();
        println!(
            "bulk_load: {} friendships ({} rows) in {took:.2?}: {:.0} friendships/s, {:.0} rows/s",
            r.added,
            2 * r.added,
            r.added as f64 / took.as_secs_f64(),
            2.0 * r.added as f64 / took.as_secs_f64()
        );
        let all: Vec<u16> = (0..presence_cluster::SLOTS).collect();
        let t0 = Instant::now();
        let rows = store.load_slots_with(&all, |_, _| {}).await?;
        let took = t0.elapsed();
        println!(
            "load_slots(all 1024): {rows} rows in {took:.2?}: {:.0} rows/s",
            rows as f64 / took.as_secs_f64()
        );
        let t0 = Instant::now();
        let rows = store.load_slots_with(&[0, 1, 2, 3], |_, _| {}).await?;
        println!("load_slots(4 slots): {rows} rows in {:.2?}", t0.elapsed());
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
