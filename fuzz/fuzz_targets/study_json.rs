#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rho_fuzz::install_panic_hook();
    let dir = rho_fuzz::scratch("study_json");
    let _ = rho_fuzz::study_json(&dir, data);
});
