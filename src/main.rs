//! The `pgfleet` command: run the proxy, check a config, start the local demo cluster, or end forward mode
//! for a database (`forward-stop`).

// The demo (and through it the test harness) belongs to the binary only; see src/demo.rs.
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgfleet::config::Config;

#[derive(Parser)]
#[command(name = "pgfleet", version, about = "PostgreSQL read/write-splitting proxy")]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Validate the config and exit: 0 when valid, 1 with a message naming the bad key otherwise.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a local primary and two streaming replicas, and run pgfleet in front of them.
    Demo {
        /// Where pgfleet listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Several shards instead: each a primary with one streaming replica, and a sharded `accounts` table.
        #[arg(long, default_value_t = 1)]
        shards: u32,
    },
    /// End forward mode for a database: drop its replication slots, publication and DDL event trigger on the
    /// primary (and pgfleet's progress rows on the replicas). Run it with pgfleet stopped; safe to repeat.
    ForwardStop {
        /// The forwarded database.
        #[arg(long)]
        database: String,
    },
}

use pgfleet::proxy::SetLogFilter as SetFilter;

fn init_logging(log: &pgfleet::config::LogConfig) -> SetFilter {
    use pgfleet::log_filter::LogFilter;
    use pgfleet::log_scope::SessionScope;
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| LogFilter::new(&text).ok());
    let built = from_env
        .or_else(|| LogFilter::new(&log.level).ok())
        .or_else(|| LogFilter::new("info").ok());
    let Some((filter, handle)) = built else {
        // "info" always parses; without a filter nothing would be logged, so say so where the log would go.
        eprintln!("pgfleet: no log filter could be built; logging is off");
        return Box::new(|_: &str| Err("logging is off".to_owned()));
    };
    // The filter decides; the formatter below lets everything through to it.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(std::io::stderr);
    // Over whichever filter RUST_LOG, log.level or a reload sets: the dependencies that log statement text
    // below INFO stay quiet (see `log_event_allowed`).
    let quiet = tracing_subscriber::filter::filter_fn(pgfleet::proxy::log_event_allowed);
    // Sessions note their span rather than entering it on every poll, unless the filter decides by span.
    pgfleet::log_scope::enter_each_poll(filter.watches_spans());
    match log.format {
        pgfleet::config::LogFormat::Json => {
            SessionScope::new(builder.json().finish().with(filter).with(quiet)).init();
        }
        pgfleet::config::LogFormat::Text => {
            // Colour codes only for a terminal: in files and containers they are noise.
            let text = builder.with_ansi(std::io::stderr().is_terminal()).finish();
            SessionScope::new(text.with(filter).with(quiet)).init();
        }
    }
    Box::new(move |level: &str| handle.set(level).map_err(|e| e.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { listen, shards }) = &cli.command {
        return run_demo(listen, *shards);
    }
    let Some(path) = cli.config else {
        eprintln!("pgfleet: --config FILE is required (see config/pgfleet.toml for every key)");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::ForwardStop { database }) = &cli.command {
        return forward_stop(&config, database);
    }
    if cli.check {
        println!(
            "pgfleet: {} is valid ({} nodes, {} users)",
            path.display(),
            config.nodes.len(),
            config.users.len()
        );
        return ExitCode::SUCCESS;
    }
    let set_filter = init_logging(&config.log);
    serve(config, Some(path), set_filter)
}

fn serve(config: Config, source: Option<PathBuf>, set_filter: SetFilter) -> ExitCode {
    // Client sessions run on their own threads (`worker_threads` of them, started with the proxy). This
    // runtime runs the rest: accepting clients, health checks, forward mode, the metrics endpoint, reloads.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Forward mode parses statements on these threads: their stack is sized for the deepest statement the
    // router parses (THREAD_STACK_SIZE says why 8 MiB), not left at tokio's 2 MiB default.
    let runtime = match builder
        .enable_all()
        .thread_stack_size(pgfleet::proxy::THREAD_STACK_SIZE)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgfleet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The main thread's stack is whatever `ulimit -s` gave the process (it can be far below 8 MiB in
    // containers): block_on runs on a thread of its own with the chosen size.
    let driver = std::thread::Builder::new()
        .name("pgfleet-main".to_owned())
        .stack_size(pgfleet::proxy::THREAD_STACK_SIZE)
        .spawn(move || run(runtime, config, source, set_filter));
    match driver.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => {
            eprintln!("pgfleet: the runtime thread panicked");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgfleet: cannot start the runtime thread: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    runtime: tokio::runtime::Runtime,
    config: Config,
    source: Option<PathBuf>,
    set_filter: SetFilter,
) -> ExitCode {
    runtime.block_on(async move {
        let shared = match pgfleet::proxy::Proxy::with_source(config, source) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pgfleet: {e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = shared.log_filter.set(set_filter);
        tokio::spawn(reload_on_sighup(shared.clone()));
        tokio::select! {
            r = pgfleet::proxy::run(shared.clone()) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgfleet: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = shutdown_signal() => {
                // The listener is dropped with the other branch: no new clients from here on.
                shared.drain().await;
                tracing::info!("shut down");
                ExitCode::SUCCESS
            }
        }
    })
}

/// SIGHUP re-reads the config file, as PostgreSQL and pgbouncer do.
async fn reload_on_sighup(shared: std::sync::Arc<pgfleet::proxy::Proxy>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: reload with the admin command RELOAD instead");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        // The outcome is logged by the reload itself.
        let _ = pgfleet::reload::reload(&shared.reload);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `pgfleet forward-stop`: says what it removed, one line each, and what it left alone.
fn forward_stop(config: &Config, database: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgfleet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pgfleet::replication::teardown::forward_stop(config, database)) {
        Ok(report) => {
            for line in &report.removed {
                println!("removed {line}");
            }
            for line in &report.notes {
                println!("note: {line}");
            }
            if report.removed.is_empty() {
                println!("forward mode had nothing left in database {database}");
            } else {
                println!("forward mode ended for database {database}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgfleet forward-stop: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(listen: &str, shards: u32) -> ExitCode {
    let (cluster, config_path) = match demo::prepare_demo(listen, shards) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pgfleet demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfleet demo: generated config is invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    let set_filter = init_logging(&config.log);
    let code = serve(config, Some(config_path), set_filter);
    // Dropping the cluster stops its servers and removes its directory.
    drop(cluster);
    code
}
