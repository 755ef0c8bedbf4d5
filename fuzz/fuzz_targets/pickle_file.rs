#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rho_fuzz::install_panic_hook();
    let dir = rho_fuzz::scratch("pickle_file");
    let _ = rho_fuzz::pickle_file(&dir, data);
});
