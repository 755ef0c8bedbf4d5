//! The CUDA kernels of src/cuda/kernels run in a CPU emulator (src/cuda/emu, C++ built by
//! build.rs): every CUDA thread of a block is a fiber, `__syncthreads`, warp shuffles and
//! `mma.sync` are barriers with their documented data movement. Same source as the GPU
//! build, so `cargo test` checks each kernel's indexing, masking, fragment layouts and
//! reductions against [`super::reference`] without a GPU. Slow (a fiber switch per
//! collective): for small shapes in tests. Not a model of timing. [`with_schedule`] runs
//! launches under other interleavings of a block's threads and with `cp.async` copies
//! landing only at their wait: a race (a missing barrier or wait) changes the result.

use super::reference::{AttnShape, Rows, Strides};
use std::sync::Mutex;

/// Element type of a kernel's 16-bit or f32 input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KDType {
    BF16 = 0,
    F16 = 1,
    F32 = 2,
}

extern "C" {
    fn rho_emu_flash_attn_fwd(
        dtype: i32,
        head_dim: i32,
        warps: i32,
        q: *const u16,
        k: *const u16,
        v: *const u16,
        o: *mut u16,
        strides12: *const i64,
        batch: i32,
        n_heads: i32,
        n_kv_heads: i32,
        seq: i32,
        scale_log2: f32,
        lse2: *mut f32,
        window: i32,
    ) -> i32;
    fn rho_emu_flash_attn_bwd(
        dtype: i32,
        head_dim: i32,
        q: *const u16,
        k: *const u16,
        v: *const u16,
        dout: *const u16,
        lse2: *const f32,
        dsum: *const f32,
        dq_acc: *mut f32,
        dk: *mut u16,
        dv: *mut u16,
        strides12: *const i64,
        batch: i32,
        n_heads: i32,
        n_kv_heads: i32,
        seq: i32,
        scale_log2: f32,
        scale: f32,
        window: i32,
    ) -> i32;
    fn rho_emu_token_ce_fwd(
        dtype: i32,
        logits: *const u8,
        sb: i64,
        ss: i64,
        seq: i64,
        targets: *const u32,
        loss: *mut f32,
        lse: *mut f32,
        n: i64,
        vocab: i64,
    ) -> i32;
    fn rho_emu_token_ce_bwd(
        dtype: i32,
        logits: *const u8,
        sb: i64,
        ss: i64,
        seq: i64,
        targets: *const u32,
        lse: *const f32,
        dloss: *const f32,
        dlogits: *mut u8,
        d_row_stride: i64,
        n: i64,
        vocab: i64,
    ) -> i32;
}

extern "C" {
    fn rho_emu_f32_to_bf16(x: f32) -> u16;
    fn rho_emu_bf16_to_f32(x: u16) -> f32;
    fn rho_emu_f32_to_f16(x: f32) -> u16;
    fn rho_emu_f16_to_f32(x: u16) -> f32;
}

/// The emulator's own conversions (what `rho_pack2` and `rho_to_f32` do in emulated kernels).
pub fn emu_convert_to_bits(dt: KDType, x: f32) -> u16 {
    // SAFETY: pure functions of their argument.
    unsafe {
        match dt {
            KDType::BF16 => rho_emu_f32_to_bf16(x),
            KDType::F16 => rho_emu_f32_to_f16(x),
            KDType::F32 => panic!("f32 has no 16-bit bits"),
        }
    }
}

/// See [`emu_convert_to_bits`].
pub fn emu_convert_to_f32(dt: KDType, b: u16) -> f32 {
    // SAFETY: pure functions of their argument.
    unsafe {
        match dt {
            KDType::BF16 => rho_emu_bf16_to_f32(b),
            KDType::F16 => rho_emu_f16_to_f32(b),
            KDType::F32 => panic!("f32 has no 16-bit bits"),
        }
    }
}

extern "C" {
    fn rho_emu_set_schedule(order: i32, seed: u64, cp_async_at_wait: i32, warp_at_a_time: i32);
}

/// The order in which the emulator runs a block's threads between two of their barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Thread 0 first (the default).
    Forward,
    /// The last thread first.
    Reverse,
    /// A fresh random permutation of the threads at every round, from this seed.
    Shuffled(u64),
}

/// How the emulator interleaves a block's threads and when a `cp.async` copy lands. A
/// kernel without races gives the same bits under every schedule: a shared-memory read
/// that no barrier orders after its write, or a read of a `cp.async` destination before
/// the issuing thread's covering `cp.async.wait_group` and a barrier, changes the result
/// under some of them. Blocks always run in grid order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub order: Order,
    /// Copies land at the issuing thread's covering wait (as late as PTX allows) instead
    /// of at issue (as early as possible).
    pub cp_async_at_wait: bool,
    /// One warp at a time runs until all its lanes reach `__syncthreads` (the last warp to
    /// arrive runs on past it), instead of every thread in turn running to its next yield
    /// (a barrier or a warp collective).
    pub warp_at_a_time: bool,
}

impl Schedule {
    /// Threads in turn, forward; copies at issue.
    pub const DEFAULT: Schedule = Schedule { order: Order::Forward, cp_async_at_wait: false, warp_at_a_time: false };
}

thread_local! {
    static SCHEDULE: std::cell::Cell<Schedule> = const { std::cell::Cell::new(Schedule::DEFAULT) };
}

/// Run `f` with the emulator's launches on this thread under `schedule`.
pub fn with_schedule<R>(schedule: Schedule, f: impl FnOnce() -> R) -> R {
    super::with_cell(&SCHEDULE, schedule, f)
}

extern "C" {
    fn rho_emu_race_probe(mode: i32, input: *const f32, out: *mut f32) -> i32;
}

/// A deliberately racy kernel (harness.cpp) on 64 threads: `mode` 0 reads another warp's
/// shared-memory write with no barrier between, 1 reads a `cp.async` destination without
/// the wait. Its output depends on the schedule: what shows that the schedules bite.
pub fn race_probe(mode: i32) -> Result<Vec<f32>, String> {
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let mut out = vec![0f32; 64];
    let _l = lock();
    // SAFETY: input and out hold the 64 floats the probe reads and writes.
    if unsafe { rho_emu_race_probe(mode, input.as_ptr(), out.as_mut_ptr()) } != 0 {
        return Err(format!("race probe: no mode {mode}"));
    }
    Ok(out)
}

/// One launch at a time: the emulator's shared memory is static storage. The guard also
/// sets this thread's schedule for the launch.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = SCHEDULE.with(|s| s.get());
    let (order, seed) = match s.order {
        Order::Forward => (0, 0),
        Order::Reverse => (1, 0),
        Order::Shuffled(seed) => (2, seed),
    };
    // SAFETY: sets a plain global read by the launches this guard serialises.
    unsafe { rho_emu_set_schedule(order, seed, s.cp_async_at_wait as i32, s.warp_at_a_time as i32) };
    g
}

/// Emulated `flash_attn_fwd_{bf16,f16}_d{64,128}[_w8]`: q, k, v are 16-bit element bits in
/// the layouts of [`Strides`] (q rows 4-byte, k and v rows 16-byte aligned), output
/// contiguous [b, s, n_heads, d] bits. Head dims 32, 64, 80, 128, 256; `warps`: 4, or 8
/// for head dim 64. `window`: the sliding window (keys i - w < j <= i), passed to the kernel
/// as the launchers do ([`super::kernel_window`]); `Some(0)` is refused.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_fwd(
    dtype: KDType,
    warps: usize,
    shape: AttnShape,
    q: &[u16],
    qs: Strides,
    k: &[u16],
    ks: Strides,
    v: &[u16],
    vs: Strides,
    scale: f32,
    window: Option<usize>,
) -> Result<Vec<u16>, String> {
    flash_fwd(dtype, warps, shape, q, qs, k, ks, v, vs, scale, None, window)
}

/// [`flash_attn_fwd`] that also returns each row's log2 normaliser lse2 [b, s, n_heads]
/// (the training forward, for the backward).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_fwd_lse(
    dtype: KDType,
    warps: usize,
    shape: AttnShape,
    q: &[u16],
    qs: Strides,
    k: &[u16],
    ks: Strides,
    v: &[u16],
    vs: Strides,
    scale: f32,
    window: Option<usize>,
) -> Result<(Vec<u16>, Vec<f32>), String> {
    let mut lse = vec![0f32; shape.batch * shape.seq * shape.n_heads];
    let o = flash_fwd(dtype, warps, shape, q, qs, k, ks, v, vs, scale, Some(&mut lse), window)?;
    Ok((o, lse))
}

#[allow(clippy::too_many_arguments)]
fn flash_fwd(
    dtype: KDType,
    warps: usize,
    shape: AttnShape,
    q: &[u16],
    qs: Strides,
    k: &[u16],
    ks: Strides,
    v: &[u16],
    vs: Strides,
    scale: f32,
    lse: Option<&mut [f32]>,
    window: Option<usize>,
) -> Result<Vec<u16>, String> {
    shape.check(&[("q", q.len(), qs, shape.n_heads), ("k", k.len(), ks, shape.n_kv_heads), ("v", v.len(), vs, shape.n_kv_heads)])?;
    if window == Some(0) {
        return Err("a sliding window must be at least 1 key (got 0)".into());
    }
    if dtype == KDType::F32 || !matches!((shape.head_dim, warps), (64, 4) | (64, 8) | (32 | 80 | 128 | 256, 4)) {
        return Err(format!("no flash attention kernel for {dtype:?} with head_dim {} and {warps} warps", shape.head_dim));
    }
    // the slices start where the kernel's pointers do: 16-byte alignment of k and v rows
    // is relative to their start, as on the GPU (candle's allocations are 256-byte aligned)
    for (name, st) in [("k", ks), ("v", vs)] {
        if st.batch % 8 != 0 || st.seq % 8 != 0 || st.head % 8 != 0 {
            return Err(format!("{name}: rows must be 16-byte aligned (strides {st:?})"));
        }
    }
    let os = Strides::contiguous(shape.seq, shape.n_heads, shape.head_dim);
    let mut o = vec![0u16; shape.batch * shape.seq * shape.n_heads * shape.head_dim];
    let st: Vec<i64> = [qs, ks, vs, os].iter().flat_map(|s| [s.batch as i64, s.head as i64, s.seq as i64]).collect();
    let _g = lock();
    // SAFETY: every row the kernel reads lies inside the slices (checked above); o is the
    // contiguous output of exactly the shape launched.
    let rc = unsafe {
        rho_emu_flash_attn_fwd(
            dtype as i32,
            shape.head_dim as i32,
            warps as i32,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            o.as_mut_ptr(),
            st.as_ptr(),
            shape.batch as i32,
            shape.n_heads as i32,
            shape.n_kv_heads as i32,
            shape.seq as i32,
            scale * std::f32::consts::LOG2_E,
            lse.map_or(std::ptr::null_mut(), |l| l.as_mut_ptr()),
            super::kernel_window(window, shape.seq),
        )
    };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(o)
}

/// Emulated `flash_attn_bwd_{bf16,f16}_d{64,128}`: q, k, v, dout (16-bit bits, rows 16-byte
/// aligned), lse2 and dsum ([b, s, n_heads] f32: the forward's log2 normalisers and
/// rowsum(dout * o)) -> (dq f32 [b, s, n_heads, d], dk and dv bits [b, s, n_kv_heads, d]).
/// `window`: the forward's sliding window.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_bwd(
    dtype: KDType,
    shape: AttnShape,
    q: &[u16],
    qs: Strides,
    k: &[u16],
    ks: Strides,
    v: &[u16],
    vs: Strides,
    dout: &[u16],
    gs: Strides,
    lse2: &[f32],
    dsum: &[f32],
    scale: f32,
    window: Option<usize>,
) -> Result<(Vec<f32>, Vec<u16>, Vec<u16>), String> {
    if window == Some(0) {
        return Err("a sliding window must be at least 1 key (got 0)".into());
    }
    shape.check(&[
        ("q", q.len(), qs, shape.n_heads),
        ("k", k.len(), ks, shape.n_kv_heads),
        ("v", v.len(), vs, shape.n_kv_heads),
        ("dout", dout.len(), gs, shape.n_heads),
    ])?;
    if dtype == KDType::F32 || !super::FLASH_BWD_HEAD_DIMS.contains(&shape.head_dim) {
        return Err(format!("no flash attention backward for {dtype:?} with head_dim {}", shape.head_dim));
    }
    for (name, st) in [("q", qs), ("k", ks), ("v", vs), ("dout", gs)] {
        if st.batch % 8 != 0 || st.seq % 8 != 0 || st.head % 8 != 0 {
            return Err(format!("{name}: rows must be 16-byte aligned (strides {st:?})"));
        }
    }
    let rows = shape.batch * shape.seq * shape.n_heads;
    if lse2.len() != rows || dsum.len() != rows {
        return Err(format!("lse2 and dsum need {rows} values, got {} and {}", lse2.len(), dsum.len()));
    }
    let d = shape.head_dim;
    let mut dq = vec![0f32; rows * d];
    let mut dk = vec![0u16; shape.batch * shape.seq * shape.n_kv_heads * d];
    let mut dv = dk.clone();
    let st: Vec<i64> = [qs, ks, vs, gs].iter().flat_map(|s| [s.batch as i64, s.head as i64, s.seq as i64]).collect();
    let _g = lock();
    // SAFETY: inputs checked to hold every row; outputs sized for the shape.
    let rc = unsafe {
        rho_emu_flash_attn_bwd(
            dtype as i32,
            d as i32,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            dout.as_ptr(),
            lse2.as_ptr(),
            dsum.as_ptr(),
            dq.as_mut_ptr(),
            dk.as_mut_ptr(),
            dv.as_mut_ptr(),
            st.as_ptr(),
            shape.batch as i32,
            shape.n_heads as i32,
            shape.n_kv_heads as i32,
            shape.seq as i32,
            scale * std::f32::consts::LOG2_E,
            scale,
            super::kernel_window(window, shape.seq),
        )
    };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok((dq, dk, dv))
}

/// Raw bytes of logits: 16-bit bits or f32 values.
pub enum Logits<'a> {
    Bits(KDType, &'a [u16]),
    F32(&'a [f32]),
}

impl Logits<'_> {
    fn parts(&self) -> (KDType, *const u8, usize) {
        match self {
            Logits::Bits(d, x) => (*d, x.as_ptr() as *const u8, x.len()),
            Logits::F32(x) => (KDType::F32, x.as_ptr() as *const u8, x.len()),
        }
    }
}

fn check_rows(len: usize, n: usize, rows: Rows, vocab: usize) -> Result<(), String> {
    if rows.seq == 0 {
        return Err("rows: seq must be positive".into());
    }
    if let Some(r) = (0..n).find(|&r| rows.at(r) + vocab > len) {
        return Err(format!("row {r} of {vocab} at element {} ({rows:?}) does not fit in {len} elements", rows.at(r)));
    }
    Ok(())
}

/// Emulated `token_ce_fwd_*`: (loss, lse) per row.
pub fn token_ce_fwd(logits: Logits, rows: Rows, targets: &[u32], vocab: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
    let (dt, ptr, len) = logits.parts();
    let n = targets.len();
    check_rows(len, n, rows, vocab)?;
    let (mut loss, mut lse) = (vec![0f32; n], vec![0f32; n]);
    let _g = lock();
    // SAFETY: rows checked to lie inside the logits; outputs have n elements.
    let rc = unsafe {
        rho_emu_token_ce_fwd(dt as i32, ptr, rows.stride_b as i64, rows.stride_s as i64, rows.seq as i64, targets.as_ptr(), loss.as_mut_ptr(), lse.as_mut_ptr(), n as i64, vocab as i64)
    };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok((loss, lse))
}

/// Emulated `token_ce_bwd_*`: dlogits (same element type as the logits, contiguous rows of vocab),
/// returned as f32 values.
pub fn token_ce_bwd(logits: Logits, rows: Rows, targets: &[u32], lse: &[f32], dloss: &[f32], vocab: usize) -> Result<Vec<f32>, String> {
    let (dt, ptr, len) = logits.parts();
    let n = targets.len();
    check_rows(len, n, rows, vocab)?;
    if lse.len() != n || dloss.len() != n {
        return Err(format!("{n} targets but {} lse and {} dloss values", lse.len(), dloss.len()));
    }
    let _g = lock();
    let run = |out: *mut u8| unsafe {
        // SAFETY: as above; out holds n * vocab elements of the logits' type.
        rho_emu_token_ce_bwd(dt as i32, ptr, rows.stride_b as i64, rows.stride_s as i64, rows.seq as i64, targets.as_ptr(), lse.as_ptr(), dloss.as_ptr(), out, vocab as i64, n as i64, vocab as i64)
    };
    let rc;
    let out = match dt {
        KDType::F32 => {
            let mut o = vec![0f32; n * vocab];
            rc = run(o.as_mut_ptr() as *mut u8);
            o
        }
        KDType::BF16 | KDType::F16 => {
            let mut o = vec![0u16; n * vocab];
            rc = run(o.as_mut_ptr() as *mut u8);
            o.into_iter().map(|b| bits_to_f32(dt, b)).collect()
        }
    };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(out)
}

extern "C" {
    fn rho_emu_adam_moment(dtype: i32, state: *mut u8, grad: *const u8, n: i64, beta: f32, gscale: f32, square: i32, grid: u32) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn rho_emu_adam_apply(dtype: i32, w: *mut u8, m: *const u8, v: *const u8, n: i64, decay: f32, step: f32, inv_sqrt_bc2: f32, eps: f32, grid: u32) -> i32;
    fn rho_emu_sum_sq(dtype: i32, x: *const u8, n: i64, out: *mut f32, grid: u32) -> i32;
}

/// Elements of one kernel type, made from f32 values (rounded to the type).
enum Elems {
    F32(Vec<f32>),
    Bits(KDType, Vec<u16>),
}

impl Elems {
    fn new(dt: KDType, x: &[f32]) -> Self {
        match dt {
            KDType::F32 => Elems::F32(x.to_vec()),
            _ => Elems::Bits(dt, x.iter().map(|&v| f32_to_bits(dt, v)).collect()),
        }
    }
    fn len(&self) -> usize {
        match self {
            Elems::F32(v) => v.len(),
            Elems::Bits(_, v) => v.len(),
        }
    }
    fn ptr(&self) -> *const u8 {
        match self {
            Elems::F32(v) => v.as_ptr() as *const u8,
            Elems::Bits(_, v) => v.as_ptr() as *const u8,
        }
    }
    fn ptr_mut(&mut self) -> *mut u8 {
        match self {
            Elems::F32(v) => v.as_mut_ptr() as *mut u8,
            Elems::Bits(_, v) => v.as_mut_ptr() as *mut u8,
        }
    }
    fn values(&self) -> Vec<f32> {
        match self {
            Elems::F32(v) => v.clone(),
            Elems::Bits(dt, v) => v.iter().map(|&b| bits_to_f32(*dt, b)).collect(),
        }
    }
}

fn same_len(n: usize, others: &[&Elems]) -> Result<(), String> {
    match others.iter().find(|e| e.len() != n) {
        Some(e) => Err(format!("inputs of {n} and {} elements", e.len())),
        None => Ok(()),
    }
}

/// Emulated `adam_moment_*` on `grid` blocks: `state` and `grad` rounded to `dt`, the new
/// state returned as f32 values of `dt`.
pub fn adam_moment(dt: KDType, state: &[f32], grad: &[f32], beta: f32, gscale: f32, square: bool, grid: u32) -> Result<Vec<f32>, String> {
    let (mut st, g) = (Elems::new(dt, state), Elems::new(dt, grad));
    same_len(st.len(), &[&g])?;
    let _l = lock();
    // SAFETY: both buffers hold n elements of dt.
    let rc = unsafe { rho_emu_adam_moment(dt as i32, st.ptr_mut(), g.ptr(), st.len() as i64, beta, gscale, square as i32, grid) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(st.values())
}

/// Emulated `adam_apply_*` on `grid` blocks: the new weights as f32 values of `dt`.
#[allow(clippy::too_many_arguments)]
pub fn adam_apply(dt: KDType, w: &[f32], m: &[f32], v: &[f32], decay: f32, step: f32, inv_sqrt_bc2: f32, eps: f32, grid: u32) -> Result<Vec<f32>, String> {
    let (mut w, m, v) = (Elems::new(dt, w), Elems::new(dt, m), Elems::new(dt, v));
    same_len(w.len(), &[&m, &v])?;
    let _l = lock();
    // SAFETY: the three buffers hold n elements of dt.
    let rc = unsafe { rho_emu_adam_apply(dt as i32, w.ptr_mut(), m.ptr(), v.ptr(), w.len() as i64, decay, step, inv_sqrt_bc2, eps, grid) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(w.values())
}

/// Emulated `sum_sq_*` on `grid` blocks: the sum of squares of `x` rounded to `dt`.
pub fn sum_sq(dt: KDType, x: &[f32], grid: u32) -> Result<f32, String> {
    let x = Elems::new(dt, x);
    let mut out = f32::NAN;
    let _l = lock();
    // SAFETY: x holds n elements of dt; out is one f32.
    let rc = unsafe { rho_emu_sum_sq(dt as i32, x.ptr(), x.len() as i64, &mut out, grid) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(out)
}

extern "C" {
    fn rho_emu_rms_norm_fwd(dtype: i32, x: *const u8, w: *const u8, y: *mut u8, rows: i64, h: i64, eps: f32) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn rho_emu_rms_norm_bwd(dtype: i32, x: *const u8, w: *const u8, dy: *const u8, dx: *mut u8, dw: *mut f32, rows: i64, h: i64, eps: f32, grid: u32) -> i32;
}

/// Emulated `rms_norm_fwd_*`: x [rows, h] and w [h] rounded to `dt`; y as f32 values of `dt`.
pub fn rms_norm_fwd(dt: KDType, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>, String> {
    let h = w.len();
    if h == 0 || x.len() % h != 0 {
        return Err(format!("x of {} elements is not rows of w's {h}", x.len()));
    }
    let (x, w) = (Elems::new(dt, x), Elems::new(dt, w));
    let mut y = Elems::new(dt, &vec![0.0; x.len()]);
    let _l = lock();
    // SAFETY: x and y hold rows * h elements of dt, w h.
    let rc = unsafe { rho_emu_rms_norm_fwd(dt as i32, x.ptr(), w.ptr(), y.ptr_mut(), (x.len() / h) as i64, h as i64, eps) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(y.values())
}

/// Emulated `rms_norm_bwd_*` on `grid` blocks: (dx as f32 values of `dt`, dw in f32).
pub fn rms_norm_bwd(dt: KDType, x: &[f32], w: &[f32], dy: &[f32], eps: f32, grid: u32) -> Result<(Vec<f32>, Vec<f32>), String> {
    let h = w.len();
    if h == 0 || x.len() % h != 0 || dy.len() != x.len() {
        return Err(format!("x of {} and dy of {} elements are not rows of w's {h}", x.len(), dy.len()));
    }
    let (x, w, dy) = (Elems::new(dt, x), Elems::new(dt, w), Elems::new(dt, dy));
    let mut dx = Elems::new(dt, &vec![0.0; x.len()]);
    let mut dw = vec![0f32; h];
    let _l = lock();
    // SAFETY: x, dy, dx hold rows * h elements of dt, w h, dw h f32.
    let rc = unsafe {
        rho_emu_rms_norm_bwd(dt as i32, x.ptr(), w.ptr(), dy.ptr(), dx.ptr_mut(), dw.as_mut_ptr(), (x.len() / h) as i64, h as i64, eps, grid)
    };
    if rc != 0 {
        return Err("emulator refused the launch (h above 8192?)".into());
    }
    Ok((dx.values(), dw))
}

extern "C" {
    fn rho_emu_rms_norm_cast(dtype: i32, x: *const f32, w: *const f32, y: *mut u8, rows: i64, h: i64, eps: f32) -> i32;
    fn rho_emu_residual_add(dtype: i32, x: *const f32, d: *const u8, out: *mut f32, n: i64, grid: u32) -> i32;
}

/// Emulated `rms_norm_cast_*`: x [rows, h] and w [h] in f32; y as f32 values of `dt` (bf16 or f16).
pub fn rms_norm_cast(dt: KDType, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>, String> {
    let h = w.len();
    if h == 0 || x.len() % h != 0 {
        return Err(format!("x of {} elements is not rows of w's {h}", x.len()));
    }
    let mut y = Elems::new(dt, &vec![0.0; x.len()]);
    let _l = lock();
    // SAFETY: x holds rows * h f32, w h f32, y rows * h elements of dt.
    let rc = unsafe { rho_emu_rms_norm_cast(dt as i32, x.as_ptr(), w.as_ptr(), y.ptr_mut(), (x.len() / h) as i64, h as i64, eps) };
    if rc != 0 {
        return Err("emulator refused the launch (f32 output?)".into());
    }
    Ok(y.values())
}

/// Emulated `residual_add_*` on `grid` blocks: x (f32) + d (rounded to `dt`, bf16 or f16) in f32.
pub fn residual_add(dt: KDType, x: &[f32], d: &[f32], grid: u32) -> Result<Vec<f32>, String> {
    if d.len() != x.len() {
        return Err(format!("x of {} and d of {} elements", x.len(), d.len()));
    }
    let d = Elems::new(dt, d);
    let mut out = vec![f32::NAN; x.len()];
    let _l = lock();
    // SAFETY: x, out hold n f32, d n elements of dt.
    let rc = unsafe { rho_emu_residual_add(dt as i32, x.as_ptr(), d.ptr(), out.as_mut_ptr(), x.len() as i64, grid) };
    if rc != 0 {
        return Err("emulator refused the launch (f32 d?)".into());
    }
    Ok(out)
}

extern "C" {
    fn rho_emu_swiglu_fwd(dtype: i32, g: *const u8, u: *const u8, h: *mut u8, n: i64, grid: u32) -> i32;
    fn rho_emu_swiglu_bwd(dtype: i32, g: *const u8, u: *const u8, dh: *const u8, dgu: *mut u8, n: i64, grid: u32) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn rho_emu_rope(
        dtype: i32,
        x: *const u8,
        sb: i64,
        ss: i64,
        sh: i64,
        cos: *const u8,
        sin: *const u8,
        y: *mut u8,
        seq: i32,
        heads: i32,
        d: i32,
        rot: i32,
        sign: f32,
        n: i32,
        grid: u32,
    ) -> i32;
}

/// Emulated `swiglu_fwd_*` on `grid` blocks: silu(g) u, as f32 values of `dt`.
pub fn swiglu_fwd(dt: KDType, g: &[f32], u: &[f32], grid: u32) -> Result<Vec<f32>, String> {
    let (ge, ue) = (Elems::new(dt, g), Elems::new(dt, u));
    same_len(g.len(), &[&ue])?;
    let mut h = Elems::new(dt, &vec![0.0; g.len()]);
    let _l = lock();
    // SAFETY: g, u, h hold n elements of dt.
    let rc = unsafe { rho_emu_swiglu_fwd(dt as i32, ge.ptr(), ue.ptr(), h.ptr_mut(), g.len() as i64, grid) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(h.values())
}

/// Emulated `swiglu_bwd_*` on `grid` blocks: (dg, du) as f32 values of `dt`.
pub fn swiglu_bwd(dt: KDType, g: &[f32], u: &[f32], dh: &[f32], grid: u32) -> Result<(Vec<f32>, Vec<f32>), String> {
    let n = g.len();
    let (ge, ue, de) = (Elems::new(dt, g), Elems::new(dt, u), Elems::new(dt, dh));
    same_len(n, &[&ue, &de])?;
    let mut dgu = Elems::new(dt, &vec![0.0; 2 * n]);
    let _l = lock();
    // SAFETY: g, u, dh hold n elements of dt, dgu 2 n.
    let rc = unsafe { rho_emu_swiglu_bwd(dt as i32, ge.ptr(), ue.ptr(), de.ptr(), dgu.ptr_mut(), n as i64, grid) };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    let mut v = dgu.values();
    let du = v.split_off(n);
    Ok((v, du))
}

/// Emulated `rope_*` on `grid` blocks: x (f32 values rounded to `dt`) read as [b, s, heads, d]
/// with element strides `(sb, ss, sh)` (the head dim contiguous), cos and sin [s, rot / 2];
/// returns the contiguous [b, s, heads, d] result as f32 values of `dt`.
#[allow(clippy::too_many_arguments)]
pub fn rope(dt: KDType, x: &[f32], strides: (usize, usize, usize), dims: (usize, usize, usize, usize), cos: &[f32], sin: &[f32], rot: usize, sign: f32, grid: u32) -> Result<Vec<f32>, String> {
    let (b, s, heads, d) = dims;
    let (sb, ss, sh) = strides;
    let n = b * s * heads * d;
    let last = if n == 0 { 0 } else { (b - 1) * sb + (s - 1) * ss + (heads - 1) * sh + d };
    if x.len() < last || rot > d || !rot.is_multiple_of(2) || cos.len() != s * rot / 2 || sin.len() != cos.len() {
        return Err(format!("rope: x of {} elements for {dims:?} strides {strides:?}, rot {rot}, cos/sin of {}/{}", x.len(), cos.len(), sin.len()));
    }
    let (xe, ce, se) = (Elems::new(dt, x), Elems::new(dt, cos), Elems::new(dt, sin));
    let mut y = Elems::new(dt, &vec![0.0; n]);
    let _l = lock();
    // SAFETY: x covers every strided row; cos, sin hold s * rot / 2 elements, y n; all of dt.
    let rc = unsafe {
        rho_emu_rope(dt as i32, xe.ptr(), sb as i64, ss as i64, sh as i64, ce.ptr(), se.ptr(), y.ptr_mut(), s as i32, heads as i32, d as i32, rot as i32, sign, n as i32, grid)
    };
    if rc != 0 {
        return Err("emulator refused the launch".into());
    }
    Ok(y.values())
}

/// 16-bit element bits -> f32.
pub fn bits_to_f32(dt: KDType, b: u16) -> f32 {
    match dt {
        KDType::BF16 => half::bf16::from_bits(b).to_f32(),
        KDType::F16 => half::f16::from_bits(b).to_f32(),
        KDType::F32 => panic!("f32 has no 16-bit bits"),
    }
}

/// f32 -> 16-bit element bits (round to nearest even).
pub fn f32_to_bits(dt: KDType, x: f32) -> u16 {
    match dt {
        KDType::BF16 => half::bf16::from_f32(x).to_bits(),
        KDType::F16 => half::f16::from_f32(x).to_bits(),
        KDType::F32 => panic!("f32 has no 16-bit bits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same value, or both NaN.
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn emulator_conversions_match_the_half_crate() {
        // every 16-bit pattern to f32
        for b in 0..=u16::MAX {
            for dt in [KDType::BF16, KDType::F16] {
                let (got, want) = (emu_convert_to_f32(dt, b), bits_to_f32(dt, b));
                assert!(same(got, want), "{dt:?} {b:#06x}: {got} vs {want}");
            }
        }
        // f32 to 16 bits, round to nearest even: every value that is exactly representable,
        // the midpoints between neighbours (ties), values just around them, subnormals,
        // overflow, infinities and NaN, and a sweep of exponents
        let mut xs: Vec<f32> = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 65504.0, 65519.9, 65520.0, 1e-8, 2.98e-8, 5.96e-8, 6.1e-5, 1e30, 3.0e38];
        for b in 0..=u16::MAX {
            for dt in [KDType::BF16, KDType::F16] {
                let v = bits_to_f32(dt, b);
                let next = bits_to_f32(dt, b.wrapping_add(1));
                if v.is_finite() && next.is_finite() {
                    let mid = ((v as f64 + next as f64) / 2.0) as f32;
                    xs.extend([v, mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits().saturating_sub(1))]);
                }
            }
        }
        for e in -150..=128 {
            for m in [1.0f64, 1.1, 1.5, 1.9999] {
                xs.push((m * 2f64.powi(e)) as f32);
                xs.push(-(m * 2f64.powi(e)) as f32);
            }
        }
        for &x in &xs {
            for dt in [KDType::BF16, KDType::F16] {
                let (got, want) = (emu_convert_to_bits(dt, x), f32_to_bits(dt, x));
                let ok = got == want || (bits_to_f32(dt, got).is_nan() && bits_to_f32(dt, want).is_nan());
                assert!(ok, "{dt:?} {x:e} ({:#010x}): {got:#06x} vs {want:#06x}", x.to_bits());
            }
        }
    }
}
