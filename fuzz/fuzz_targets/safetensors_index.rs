#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rho_fuzz::install_panic_hook();
    let dir = rho_fuzz::scratch("safetensors_index");
    let _ = rho_fuzz::safetensors_index(&dir, data);
});
