//! `rho`: thin binary. Parse arguments, call the library, map errors to exit codes.
use clap::Parser;

fn main() {
    // `rho ... | head`: a closed stdout ends the process quietly, as for other Unix
    // tools, instead of a panic in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // glibc malloc: keep freed memory for reuse (no mmap per large block, no trimming). candle allocates every op's result; with glibc's defaults whether those come
    // back page-faulted from the kernel depends on the allocation history (its dynamic mmap
    // threshold). BENCHMARKS.md, "glibc malloc", measures both; RHO_MALLOC_DEFAULTS=1 keeps
    // glibc's defaults (memory given back to the system sooner).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("RHO_MALLOC_DEFAULTS").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1); // -1: never (mallopt(3))
        }
    }
    let cli = rho::cli::Cli::parse();
    if let Err(e) = rho::cli::run(cli) {
        // At most a few lines, whatever the error holds (limits::brief_error).
        eprintln!("error: {}", rho::limits::brief_error(&e.to_string()));
        std::process::exit(e.exit_code());
    }
}
