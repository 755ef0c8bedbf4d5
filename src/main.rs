//! `rho`: thin binary. Parse arguments, call the library, map errors to exit codes.
use clap::Parser;

fn main() {
    let cli = rho::cli::Cli::parse();
    if let Err(e) = rho::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
