//! wschat's command line: parse flags, set up logging, run the server, map the outcome to an
//! exit code (0 clean stop, 1 runtime failure such as a port in use, 2 usage error).

use std::process::ExitCode;

use wschat::cli::{self, Command};
use wschat::config::PageSource;
use wschat::{Server, ServerError};

/// Counts the heap in use, so the memory ceiling is judged on every byte, whoever holds it.
#[global_allocator]
static ALLOCATOR: wschat::memory::CountingAllocator = wschat::memory::CountingAllocator;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = std::env::var("PORT").ok();
    let redis = std::env::var("WSCHAT_REDIS").ok();
    let max_memory = std::env::var("WSCHAT_MAX_MEMORY").ok();
    let env = cli::Environment {
        port: port.as_deref(),
        redis: redis.as_deref(),
        max_memory: max_memory.as_deref(),
    };
    let (config, level) = match cli::parse(&args, env) {
        Ok(Command::Run(config, level)) => (config, level),
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("wschat {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wschat: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_utc_timestamps()
        .init()
    {
        eprintln!("wschat: cannot start logging: {e}");
        return ExitCode::from(1);
    }
    let page = match &config.page {
        PageSource::BuiltIn => "built-in page".to_string(),
        PageSource::Dir(dir) => format!("page from {}", dir.display()),
    };
    let mut server = match Server::bind(*config) {
        Ok(server) => server,
        Err(e) => return fail(e),
    };
    if let Err(e) = server.handle_signals() {
        return fail(e);
    }
    let address = server.local_addr();
    let scheme = if server.tls_addr() == Some(address) {
        "https"
    } else {
        "http"
    };
    log::info!(
        "wschat {} listening on {address} ({page}): open {scheme}://localhost:{}/ in a browser",
        env!("CARGO_PKG_VERSION"),
        address.port()
    );
    if let Some(tls) = server.tls_addr().filter(|tls| *tls != address) {
        log::info!("TLS listening on {tls}: https://localhost:{}/", tls.port());
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// One line on stderr (the log goes there too, so it is not logged a second time).
fn fail(error: ServerError) -> ExitCode {
    eprintln!("wschat: {error}");
    ExitCode::from(1)
}
