//! `rho`: thin binary. Parse arguments, call the library, map errors to exit codes.
use clap::Parser;

fn main() {
    // `rho ... | head`: a closed stdout ends the process quietly, as for other Unix
    // tools, instead of a panic in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = rho::cli::Cli::parse();
    if let Err(e) = rho::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
