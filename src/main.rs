//! The `portcullis` command line (SPEC §2).

// glibc's malloc and free were ~15% of the CPU a proxied request took (`perf`);
// mimalloc cuts CPU per request by 15-25% (README, Performance). Built with
// `no_thp` (Cargo.toml): mimalloc would advise transparent huge pages on its
// arena, and each touched 2 MiB then counts whole: 9 MiB more RSS at start and
// 11.6 MiB more with 10,000 idle clients (`benches/idle_rss.sh`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use portcullis::runtime::server::{self, ProcessFlags};
use portcullis::tables::plan::{Plan, DEFAULT_ADMIN};
use portcullis::tables::Gateway;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// An API gateway on Cloudflare's Pingora.
#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The gateway's YAML config file.
    #[arg(short, long, value_name = "FILE")]
    conf: Option<PathBuf>,
    /// Check the config file and exit: 0 when valid, 1 with every error listed.
    #[arg(short, long)]
    test: bool,
    /// Run in the background (Pingora's daemon mode).
    #[arg(short, long)]
    daemon: bool,
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start demo user and order services and the gateway in front of them.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Where the admin listener (metrics, health) listens.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { listen, admin }) = cli.command {
        return match portcullis::runtime::demo::run(listen, admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.conf else {
        eprintln!("portcullis: no config file; use -c FILE (or `portcullis demo`)");
        return ExitCode::from(2);
    };
    let file = path.display().to_string();
    let (config, gateway) = match Gateway::load_file(&path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{file}: {} error(s)", errors.0.len());
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("{file}: the configuration is valid");
        return ExitCode::SUCCESS;
    }
    portcullis::telemetry::process_log::init_logging(&config);
    let flags = ProcessFlags {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    let plan = Plan::from_config(&config);
    if !cli.upgrade {
        if let Err(e) = server::check_addresses_free(&plan) {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    server::run(server::assemble(plan, gateway, flags, Some(path)));
    ExitCode::SUCCESS
}
