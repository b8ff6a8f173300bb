//! The command line: the scenario and its options, their defaults, and what is wrong with
//! them.

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) scenario: String,
    pub(crate) events: usize,
    pub(crate) webhooks: usize,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) batch: usize,
    pub(crate) pending: usize,
    pub(crate) stored: usize,
    pub(crate) data_dir: Option<std::path::PathBuf>,
    pub(crate) minutes: f64,
    pub(crate) keep: String,
    pub(crate) postgres: bool,
    pub(crate) hosts: usize,
}

const SCENARIOS: [&str; 7] = ["flat", "rate", "slow", "scale", "backlog", "idle", "soak"];

pub(crate) const USAGE: &str = "usage: cargo bench -p wasmhooks --bench throughput -- \
[flat|rate|slow|scale|backlog|idle|soak] [--events N] [--webhooks W] [--concurrency C] \
[--rate R] [--batch B] [--pending N] [--stored N] [--data-dir DIR] [--minutes M] \
[--keep 1m|forever] [--postgres] [--hosts N]";

/// The command line, or what is wrong with it.
pub(crate) fn args() -> Result<Args, String> {
    let mut args = Args {
        scenario: "flat".into(),
        events: 20_000,
        webhooks: 1,
        concurrency: 32,
        rate: None,
        batch: 1,
        pending: 1_000_000,
        stored: 1_000_000,
        data_dir: None,
        minutes: 10.0,
        keep: "1m".into(),
        postgres: false,
        hosts: 1,
    };
    // The soak's own defaults, unless given: POSTs of 50 on 8 connections.
    let (mut batch_given, mut concurrency_given) = (false, false);
    fn number<T: std::str::FromStr>(arg: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{arg} needs a value"))?;
        value
            .replace('_', "")
            .parse()
            .ok()
            .filter(|_| !value.starts_with('-'))
            .ok_or_else(|| format!("{arg}: `{value}` is not a positive number"))
    }
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => args.events = number(&arg, it.next())?,
            "--webhooks" => args.webhooks = number(&arg, it.next())?,
            "--concurrency" => {
                args.concurrency = number(&arg, it.next())?;
                concurrency_given = true;
            }
            "--rate" => args.rate = Some(number(&arg, it.next())?),
            "--batch" => {
                args.batch = number(&arg, it.next())?;
                batch_given = true;
            }
            "--pending" => args.pending = number(&arg, it.next())?,
            "--stored" => args.stored = number(&arg, it.next())?,
            "--data-dir" => {
                let dir = it.next().ok_or("--data-dir needs a value")?;
                args.data_dir = Some(dir.into());
            }
            "--minutes" => args.minutes = number(&arg, it.next())?,
            "--keep" => args.keep = it.next().ok_or("--keep needs a value")?,
            "--postgres" => args.postgres = true,
            "--hosts" => args.hosts = number(&arg, it.next())?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if SCENARIOS.contains(&s) => args.scenario = s.to_string(),
            other => return Err(format!("unknown scenario or option `{other}`")),
        }
    }
    if args.events == 0 || args.concurrency == 0 || args.batch == 0 || args.hosts == 0 {
        return Err("--events, --concurrency, --batch and --hosts must be at least 1".into());
    }
    if args.postgres && !["flat", "rate", "slow", "scale"].contains(&args.scenario.as_str()) {
        return Err(format!(
            "--postgres is for flat, rate, slow and scale; `{}` measures a data dir",
            args.scenario
        ));
    }
    if args.hosts > 1 && !args.postgres {
        return Err(format!(
            "--hosts {} needs --postgres: hosts share their work only through a PostgreSQL \
             database (a sled data dir belongs to one host)",
            args.hosts
        ));
    }
    if args.hosts > 1 && !["flat", "rate"].contains(&args.scenario.as_str()) {
        return Err("--hosts is for flat and rate".into());
    }
    if args.rate.is_some_and(|r: f64| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be more than 0 events/s".into());
    }
    if args.scenario == "rate" && args.rate.is_none() {
        args.rate = Some(1000.0);
    }
    if args.scenario == "soak" {
        args.rate = args.rate.or(Some(3000.0));
        if !batch_given {
            args.batch = 50;
        }
        if !concurrency_given {
            args.concurrency = 8;
        }
        args.events = (args.rate.unwrap() * args.minutes * 60.0).round() as usize;
        if args.events == 0 {
            return Err("--minutes must be more than 0".into());
        }
    }
    Ok(args)
}
