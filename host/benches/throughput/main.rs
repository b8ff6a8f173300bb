//! End-to-end throughput and latency of the real host, against the raw HTTP limit of the same
//! machine measured in the same run.
//!
//! `cargo bench -p wasmhooks --bench throughput -- <scenario> [options]`
//!
//! Scenarios:
//! - `flat` (default): E events flat out through the API to W webhooks on one fast receiver;
//!   then a plain keep-alive client posts the same bodies to the same receiver with the same
//!   concurrency (the raw limit), and the ratio is printed.
//! - `rate`: the same at a fixed `--rate` events/s (latency under a steady load).
//! - `slow`: the same events to W fast webhooks plus one more webhook, twice: first on a
//!   second fast receiver (the baseline: same work per event), then on a receiver that
//!   answers after 2 s; prints what the slow receiver cost the fast ones.
//! - `scale`: 1,000 webhooks over 100 distinct modules, each event matching one of them.
//! - `backlog`: 1,000,000 deliveries waiting (a 1 h delay), the host's memory meanwhile, then a
//!   restart: how long until it answers and until a new delivery arrives.
//! - `idle`: `--stored N` small events delivered (so the store holds N finished deliveries),
//!   a clean stop (SIGTERM), a start on the same data, and the idle host's memory a few
//!   seconds after it answers: what stored history costs in RSS (issue 25). `--data-dir DIR`
//!   fills and keeps DIR instead of a temporary dir (with `--stored 0`, it only restarts
//!   on what DIR already holds). Without `--rate`, events are emitted faster than they are
//!   delivered: the queue's peak is then part of what the store keeps (sled keeps its
//!   freed pages in memory too); `--rate` below the delivery rate measures history alone.
//! - `soak`: `--rate` events/s (3,000 by default, POSTs of 50) to one webhook for `--minutes`,
//!   with every kind of retention set to `--keep` (1m by default, or `forever`): every 30 s the
//!   host's RSS, the data dir's size on disk and what the pruner removed, to see whether they
//!   level off; at the end the latency and whether the host kept up.
//!
//! Options: `--events N`, `--webhooks W`, `--concurrency C` (emitting connections), `--rate R`,
//! `--batch B` (events per POST), `--pending N` (backlog), `--stored N` and `--data-dir DIR`
//! (idle), `--minutes M` and `--keep D` (soak). The host is the release binary, started as
//! its own process on a temporary data dir with default settings (durable acks: every 202
//! waits for the group commit; `WASMHOOKS_*` variables of the bench's environment reach it,
//! e.g. `WASMHOOKS_RETENTION__INTERVAL`), and its CPU time and RSS come from /proc.
//! `THROUGHPUT_HOST_BINARY` runs another build.
//!
//! `--postgres` (flat, rate, slow, scale) runs the hosts on PostgreSQL instead of sled: the
//! bench starts a server of its own for the run (`postgres::throwaway`, with durable
//! settings: fsync, synchronous_commit and full_page_writes on, so a 202 waits for a flushed
//! commit as it would in production), a fresh database for every measured run, and one
//! random secrets key the hosts share. `--hosts N` (flat, rate; with `--postgres` only) runs
//! N hosts on that database: the webhooks are made through the first, the bench waits until
//! every host routes events to them, and the POSTs take turns among the hosts; CPU time and
//! RSS are summed in the table and given per host below it. A `--postgres` run also reports
//! what the database did per delivery: the server's CPU (all its processes); the requests the
//! hosts sent it (TCP segments with data, from `ss`: a round trip is one, and so is each
//! statement close that tokio-postgres sends without waiting after running a statement given
//! as text); transactions (`pg_stat_database`: a statement given as text is prepared first,
//! and the prepare's round trip counts as a transaction of its own outside BEGIN…COMMIT); and,
//! when the `pg_stat_statements` extension is installed (it is then loaded), the statements
//! executed, most executed first.

mod api;
mod args;
mod backlog;
mod emitter;
mod host;
mod idle;
mod postgres;
mod progress;
mod raw;
mod receiver;
mod report;
mod run;
mod soak;

use crate::args::{args, Args, USAGE};
use crate::backlog::backlog;
use crate::idle::idle;
use crate::postgres::Postgres;
use crate::raw::raw;
use crate::report::HEADER;
use crate::run::{run, Extra};
use crate::soak::soak;

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef";

fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let postgres = args.postgres.then(Postgres::start);
    let postgres = postgres.as_ref();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if args.scenario == "idle" {
            println!(
                "\nscenario `idle`: {} events stored, then a restart, on {}\n",
                args.stored,
                args.data_dir
                    .as_ref()
                    .map_or("a temporary data dir".into(), |d| d.display().to_string())
            );
            idle(&args).await;
            return;
        }
        let storage = match postgres {
            Some(_) if args.hosts > 1 => format!("PostgreSQL, {} hosts", args.hosts),
            Some(_) => "PostgreSQL, 1 host".to_string(),
            None => "sled".to_string(),
        };
        println!(
            "\nscenario `{}`: {} events, {} webhook(s), {} emitting connection(s), batch {}{}; {}\n",
            args.scenario,
            args.events,
            args.webhooks,
            args.concurrency,
            args.batch,
            args.rate.map_or(String::new(), |r| format!(", {r} events/s")),
            match postgres {
                Some(postgres) => format!("{storage} on {}", postgres.describe()),
                None => storage.clone(),
            }
        );
        match args.scenario.as_str() {
            "flat" | "rate" => {
                let run = run(&args, postgres, Extra::None, 1, 1).await;
                let what = format!("{}, {storage}", args.scenario);
                println!("{HEADER}");
                run.print(&what);
                println!();
                run.print_details(&what);
                let raw = raw(run.deliveries.max(20_000), 32).await;
                println!(
                    "- raw limit: a keep-alive client, 32 in flight, same bodies, same receiver: **{raw:.0} requests/s**"
                );
                println!(
                    "- host / raw: **{:.3}**",
                    run.rate() / raw
                );
            }
            "slow" => {
                let base = run(&args, postgres, Extra::Fast, 1, 1).await;
                let slow = run(&args, postgres, Extra::Slow, 1, 1).await;
                println!("{HEADER}");
                base.print("plus a webhook on a second fast receiver (baseline)");
                slow.print("plus a webhook on a receiver answering after 2 s");
                println!();
                base.print_details("baseline");
                slow.print_details("slow receiver");
                println!(
                    "- the slow receiver changed the others' throughput by **{:+.1}%**",
                    (slow.rate() / base.rate() - 1.0) * 100.0
                );
            }
            "scale" => {
                let args = Args {
                    webhooks: 1000,
                    ..args.clone()
                };
                let run = run(&args, postgres, Extra::None, 1000, 100).await;
                println!("{HEADER}");
                run.print("1,000 webhooks, 100 modules, one match per event");
                println!();
                run.print_details(&storage);
            }
            "backlog" => backlog(&args).await,
            "idle" => unreachable!("idle was run above"),
            "soak" => soak(&args).await,
            other => unreachable!("scenario {other} was checked"),
        }
    });
}
