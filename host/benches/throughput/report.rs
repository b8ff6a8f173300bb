//! What a measured run of flat, rate, slow or scale found, and how it prints: the table's
//! header and row, the hosts' shares and PostgreSQL's work per delivery.

use crate::postgres::DatabaseWork;

pub(crate) const HEADER: &str = "| run | deliveries | time | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | host CPU | host peak RSS |\n|---|---|---|---|---|---|---|---|---|---|";

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub(crate) struct Run {
    pub(crate) deliveries: usize,
    pub(crate) seconds: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    /// Per host: CPU seconds during the measured phase and peak RSS in MiB.
    pub(crate) hosts: Vec<(f64, f64)>,
    /// What PostgreSQL did, on `--postgres`.
    pub(crate) database: Option<DatabaseWork>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }

    /// Its row of the table: the hosts' CPU and peak RSS summed.
    pub(crate) fn print(&self, what: &str) {
        let cpu: f64 = self.hosts.iter().map(|(cpu, _)| cpu).sum();
        let rss_peak: f64 = self.hosts.iter().map(|(_, rss)| rss).sum();
        println!(
            "| {what} | {} | {:.1} s | **{:.0}/s** | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0} MiB |",
            self.deliveries,
            self.seconds,
            self.rate(),
            self.p50,
            self.p90,
            self.p99,
            self.max,
            cpu / self.seconds * 100.0,
            rss_peak
        );
    }

    /// What the table's row sums up: each host's share, and PostgreSQL's work per delivery.
    pub(crate) fn print_details(&self, what: &str) {
        if self.hosts.len() > 1 {
            let hosts: Vec<String> = self
                .hosts
                .iter()
                .enumerate()
                .map(|(i, (cpu, rss))| {
                    format!(
                        "host {} CPU {:.0}%, peak RSS {rss:.0} MiB",
                        i + 1,
                        cpu / self.seconds * 100.0
                    )
                })
                .collect();
            println!("- {what}, per host: {}", hosts.join("; "));
        }
        let Some(database) = &self.database else {
            return;
        };
        let deliveries = self.deliveries as f64;
        let requests = database
            .requests
            .map_or("not counted (`ss` did not run)".into(), |n| {
                format!(
                    "**{:.2}** ({n} in all; TCP segments from the hosts: every round trip, \
                     and every statement close sent without waiting)",
                    n as f64 / deliveries
                )
            });
        println!(
            "- {what}, PostgreSQL: CPU **{:.0}%**; per delivery: requests {requests}, \
             transactions **{:.2}** ({} in all)",
            database.cpu / self.seconds * 100.0,
            database.transactions as f64 / deliveries,
            database.transactions
        );
        let Some(statements) = &database.statements else {
            println!(
                "- {what}, statements per delivery: not counted (pg_stat_statements is not installed)"
            );
            return;
        };
        let total: u64 = statements.iter().map(|(calls, _)| calls).sum();
        let control: u64 = statements
            .iter()
            .filter(|(_, query)| {
                let word = query.split_whitespace().next().unwrap_or("");
                ["BEGIN", "COMMIT", "ROLLBACK", "START"]
                    .iter()
                    .any(|w| word.eq_ignore_ascii_case(w))
            })
            .map(|(calls, _)| calls)
            .sum();
        println!(
            "- {what}, statements executed per delivery: **{:.2}** ({total} in all, {:.2} per \
             delivery of them BEGIN/COMMIT/ROLLBACK; a statement sent as text is prepared first, \
             one more round trip that is not counted here), the most executed:",
            total as f64 / deliveries,
            control as f64 / deliveries
        );
        for (calls, query) in statements.iter().take(12) {
            println!(
                "  - {:.3} per delivery ({calls}): `{query}`",
                *calls as f64 / deliveries
            );
        }
    }
}
