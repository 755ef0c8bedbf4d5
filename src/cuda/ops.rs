//! Launchers for the PTX kernels (`--features cuda`). Grid and block shapes are the ones the
//! emulator harness (src/cuda/emu/harness.cpp) uses.

use super::reference::Strides;
use super::{contiguous_range, FLASH_HEAD_DIMS};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const TOKEN_CE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/token_ce.ptx"));

/// q [b, s, nh, d], k/v [b, s, nkv, d] (bf16 or f16, 4-byte aligned rows) -> o [b, s, nh, d],
/// and with `lse` each row's log2 normaliser [b, s, nh] f32 (training). `window`: the sliding
/// window (keys i - w < j <= i; `super::kernel_window` gives the kernel's argument).
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attn_fwd(
    scale: f32,
    window: Option<usize>,
    variant: super::FlashVariant,
    lse: bool,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape, Option<CudaStorage>)> {
    let (shape, st) = super::attn_layouts(l1, l2, l3)?;
    if !FLASH_HEAD_DIMS.contains(&shape.head_dim) {
        candle_core::bail!("flash attention: no kernel for head_dim {} (have {FLASH_HEAD_DIMS:?})", shape.head_dim);
    }
    // q rows 4-byte aligned (32-bit loads), k and v rows 16-byte aligned (cp.async)
    for (l, s, a) in [(l1, st[0], 2), (l2, st[1], 8), (l3, st[2], 8)] {
        if l.start_offset() % a != 0 || s.batch % a != 0 || s.seq % a != 0 || s.head % a != 0 {
            candle_core::bail!("flash attention: rows must be {}-byte aligned (offset {}, strides {s:?})", 2 * a, l.start_offset());
        }
    }
    // training (lse): the 4-warp kernel that also writes the normalisers (head dims of the backward)
    let (prefix, suffix, nw) = if lse {
        if !super::FLASH_BWD_HEAD_DIMS.contains(&shape.head_dim) {
            candle_core::bail!("flash attention: no training forward for head dim {} (have {:?})", shape.head_dim, super::FLASH_BWD_HEAD_DIMS);
        }
        ("lse_", "", 4)
    } else {
        ("", variant.suffix(shape.head_dim), variant.warps(shape.head_dim))
    };
    let offs = [l1.start_offset(), l2.start_offset(), l3.start_offset()];
    let window = super::kernel_window(window, shape.seq);
    let dev = &s1.device;
    let lse = if lse { Some(dev.alloc_zeros::<f32>(shape.batch * shape.seq * shape.n_heads)?) } else { None };
    let slice = match (&s1.slice, &s2.slice, &s3.slice) {
        (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
            let name = format!("{prefix}bf16_d{}{suffix}", shape.head_dim);
            CudaStorageSlice::BF16(launch_flash(dev, &name, nw, [q, k, v], offs, &st, shape, scale, lse.as_ref(), window)?)
        }
        (CudaStorageSlice::F16(q), CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
            let name = format!("{prefix}f16_d{}{suffix}", shape.head_dim);
            CudaStorageSlice::F16(launch_flash(dev, &name, nw, [q, k, v], offs, &st, shape, scale, lse.as_ref(), window)?)
        }
        _ => candle_core::bail!("flash attention: q, k, v must all be bf16 or all f16 on CUDA"),
    };
    let out = Shape::from((shape.batch, shape.seq, shape.n_heads, shape.head_dim));
    let lse = lse.map(|l| CudaStorage { slice: CudaStorageSlice::F32(l), device: dev.clone() });
    Ok((CudaStorage { slice, device: dev.clone() }, out, lse))
}

/// The f32 values of a contiguous input of `n` elements.
fn f32_view<'a>(x: In<'a>, n: usize, what: &str) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    match (&x.0.slice, x.1.contiguous_offsets()) {
        (CudaStorageSlice::F32(s), Some((a, z))) if z - a == n => Ok(s.slice(a..z)),
        _ => candle_core::bail!("flash attention backward: {what} must be {n} contiguous f32"),
    }
}

/// One input of the backward: storage, layout.
pub(crate) type In<'a> = (&'a CudaStorage, &'a Layout);

/// Gradients of flash attention (head dims in `FLASH_BWD_HEAD_DIMS`): q, k, v, dout [b, s, heads, d] (rows
/// 16-byte aligned), lse2 and dsum [b, s, nh] f32 contiguous -> (dq [b, s, nh, d] f32, dk and
/// dv [b, s, nkv, d] in the inputs' dtype), contiguous. `window`: the forward's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attn_bwd(
    scale: f32,
    window: Option<usize>,
    q: In,
    k: In,
    v: In,
    dout: In,
    lse2: In,
    dsum: In,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let (shape, st) = super::attn_layouts(q.1, k.1, v.1)?;
    let (gshape, gst) = super::attn_layouts(dout.1, k.1, v.1)?;
    if gshape != shape {
        candle_core::bail!("flash attention backward: dout {:?} does not match q {:?}", dout.1.dims(), q.1.dims());
    }
    let d = shape.head_dim;
    if !super::FLASH_BWD_HEAD_DIMS.contains(&d) {
        candle_core::bail!("flash attention backward: no kernel for head_dim {d} (have {:?})", super::FLASH_BWD_HEAD_DIMS);
    }
    let all = [(q.1, st[0]), (k.1, st[1]), (v.1, st[2]), (dout.1, gst[0])];
    for (l, s) in all {
        if l.start_offset() % 8 != 0 || s.batch % 8 != 0 || s.seq % 8 != 0 || s.head % 8 != 0 {
            candle_core::bail!("flash attention backward: rows must be 16-byte aligned (offset {}, strides {s:?})", l.start_offset());
        }
    }
    let rows = shape.batch * shape.seq * shape.n_heads;
    let lse = f32_view(lse2, rows, "lse2")?;
    let ds = f32_view(dsum, rows, "dsum")?;
    let dev = q.0.device.clone();
    // every key block adds its share of dq: zeros first
    let mut dq = dev.alloc_zeros::<f32>(rows * d)?;
    let n_kv = shape.batch * shape.seq * shape.n_kv_heads * d;
    let bc = super::flash_bwd_keys_per_block(d);
    let window = super::kernel_window(window, shape.seq);
    let strides: Vec<i64> = [st[0], st[1], st[2], gst[0]].iter().flat_map(|s| [s.batch as i64, s.head as i64, s.seq as i64]).collect();
    let cfg = LaunchConfig {
        grid_dim: (shape.seq.div_ceil(bc) as u32, shape.n_kv_heads as u32, shape.batch as u32),
        block_dim: (2 * bc as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    macro_rules! run {
        ($qs:expr, $ks:expr, $vs:expr, $gs:expr, $t:ty, $name:expr, $wrap:path) => {{
            // SAFETY: dk and dv: every row of every key is written (rows past the end are not part of them).
            let dk = unsafe { dev.alloc::<$t>(n_kv)? };
            let dv = unsafe { dev.alloc::<$t>(n_kv)? };
            if rows > 0 {
                let (qv, kv, vv, gv) = ($qs.slice(q.1.start_offset()..), $ks.slice(k.1.start_offset()..), $vs.slice(v.1.start_offset()..), $gs.slice(dout.1.start_offset()..));
                let func = dev.get_or_load_custom_func($name, "rho_attention", ATTENTION_PTX)?;
                let mut b = func.builder();
                b.arg(&qv);
                b.arg(&kv);
                b.arg(&vv);
                b.arg(&gv);
                b.arg(&lse);
                b.arg(&ds);
                b.arg(&mut dq);
                b.arg(&dk);
                b.arg(&dv);
                for x in &strides {
                    b.arg(x);
                }
                candle_core::builder_arg!(b, shape.n_heads as i32, shape.n_kv_heads as i32, shape.seq as i32, scale * std::f32::consts::LOG2_E, scale, window);
                // SAFETY: arguments match flash_attn_bwd_* in attention.cu; rows checked above.
                unsafe { b.launch(cfg) }.w()?;
            }
            (CudaStorage { slice: $wrap(dk), device: dev.clone() }, CudaStorage { slice: $wrap(dv), device: dev.clone() })
        }};
    }
    let (dk, dv) = match (&q.0.slice, &k.0.slice, &v.0.slice, &dout.0.slice) {
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c), CudaStorageSlice::BF16(d)) => {
            run!(a, b, c, d, half::bf16, &format!("flash_attn_bwd_bf16_d{}", shape.head_dim), CudaStorageSlice::BF16)
        }
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b), CudaStorageSlice::F16(c), CudaStorageSlice::F16(d)) => {
            run!(a, b, c, d, half::f16, &format!("flash_attn_bwd_f16_d{}", shape.head_dim), CudaStorageSlice::F16)
        }
        _ => candle_core::bail!("flash attention backward: q, k, v, dout must all be bf16 or all f16"),
    };
    Ok((CudaStorage { slice: CudaStorageSlice::F32(dq), device: dev.clone() }, dk, dv))
}

#[allow(clippy::too_many_arguments)]
fn launch_flash<T: DeviceRepr>(
    dev: &CudaDevice,
    variant: &str,
    warps: usize,
    qkv: [&CudaSlice<T>; 3],
    offs: [usize; 3],
    st: &[Strides; 3],
    shape: super::AttnShape,
    scale: f32,
    lse: Option<&CudaSlice<f32>>,
    window: i32,
) -> Result<CudaSlice<T>> {
    let n = shape.batch * shape.seq * shape.n_heads * shape.head_dim;
    // SAFETY: every element is written by the kernel (each (row, head) of the output).
    let o = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(o);
    }
    let func = dev.get_or_load_custom_func(&format!("flash_attn_fwd_{variant}"), "rho_attention", ATTENTION_PTX)?;
    let q = qkv[0].slice(offs[0]..);
    let k = qkv[1].slice(offs[1]..);
    let v = qkv[2].slice(offs[2]..);
    let os = Strides::contiguous(shape.seq, shape.n_heads, shape.head_dim);
    // (batch, head, seq) strides of q, k, v and o, in the kernel's argument order
    let strides: Vec<i64> = [st[0], st[1], st[2], os].iter().flat_map(|s| [s.batch as i64, s.head as i64, s.seq as i64]).collect();
    let mut b = func.builder();
    b.arg(&q);
    b.arg(&k);
    b.arg(&v);
    b.arg(&o);
    for x in &strides {
        b.arg(x);
    }
    candle_core::builder_arg!(
        b,
        shape.n_heads as i32,
        shape.n_kv_heads as i32,
        shape.seq as i32,
        scale * std::f32::consts::LOG2_E
    );
    let null = 0u64; // no lse output (evaluation kernels do not read it)
    match lse {
        Some(l) => b.arg(l),
        None => b.arg(&null),
    };
    b.arg(&window);
    let cfg = LaunchConfig {
        grid_dim: (shape.seq.div_ceil(16 * warps) as u32, shape.n_heads as u32, shape.batch as u32),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument list and types match flash_attn_fwd_* in attention.cu; every row read
    // lies in the inputs (layouts checked by attn_layouts and candle's shapes).
    unsafe { b.launch(cfg) }.w()?;
    Ok(o)
}

/// logits [b, s, vocab] (f32/bf16/f16, vocab contiguous, any batch/position strides), targets [b, s]
/// u32 contiguous -> per-token loss [b, s] f32. Targets outside the vocabulary give NaN
/// (`token_loss_eval` and `token_cross_entropy` check them first).
pub(crate) fn token_ce_fwd(s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
    let (b, s, _, _) = super::ce_rows(l1)?;
    let (loss, _lse) = ce_forward(s1, l1, s2, l2)?;
    Ok((CudaStorage { slice: CudaStorageSlice::F32(loss), device: s1.device.clone() }, Shape::from((b, s))))
}

/// (logits, targets, dloss [b, s] f32) -> dlogits [b, s, vocab] contiguous in the logits'
/// dtype: `token_ce_fwd` again for the log-sum-exp of each row, then `token_ce_bwd`.
pub(crate) fn token_ce_bwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (b, s, v, rows) = super::ce_rows(l1)?;
    let n = b * s;
    let g = match (&s3.slice, l3.contiguous_offsets()) {
        (CudaStorageSlice::F32(g), Some((a, z))) if z - a == n => g.slice(a..z),
        _ => candle_core::bail!("token cross-entropy: the loss gradient must be {n} contiguous f32"),
    };
    let (_, lse) = ce_forward(s1, l1, s2, l2)?;
    let tg = targets_view(s2, l2, n)?;
    let dev = &s1.device;
    let off = l1.start_offset();
    macro_rules! launch {
        ($x:expr, $t:ty, $name:expr) => {{
            // SAFETY: the kernel writes every element of the n x v gradient.
            let out = unsafe { dev.alloc::<$t>(n * v)? };
            if n > 0 && v > 0 {
                let x = $x.slice(off..);
                let func = dev.get_or_load_custom_func($name, "rho_token_ce", TOKEN_CE_PTX)?;
                let mut bld = func.builder();
                bld.arg(&x);
                candle_core::builder_arg!(bld, rows.stride_b as i64, rows.stride_s as i64, rows.seq as i64);
                bld.arg(&tg);
                bld.arg(&lse);
                bld.arg(&g);
                bld.arg(&out);
                candle_core::builder_arg!(bld, v as i64, v as i64);
                let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: arguments match token_ce_bwd_* in token_ce.cu.
                unsafe { bld.launch(cfg) }.w()?;
            }
            out
        }};
    }
    let slice = match &s1.slice {
        CudaStorageSlice::BF16(x) => CudaStorageSlice::BF16(launch!(x, half::bf16, "token_ce_bwd_bf16")),
        CudaStorageSlice::F16(x) => CudaStorageSlice::F16(launch!(x, half::f16, "token_ce_bwd_f16")),
        CudaStorageSlice::F32(x) => CudaStorageSlice::F32(launch!(x, f32, "token_ce_bwd_f32")),
        _ => candle_core::bail!("token cross-entropy: logits must be f32, bf16 or f16"),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, Shape::from((b, s, v))))
}

fn targets_view<'a>(
    s2: &'a CudaStorage,
    l2: &Layout,
    n: usize,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>> {
    match (&s2.slice, l2.contiguous_offsets()) {
        (CudaStorageSlice::U32(t), Some((a, z))) if z - a == n => Ok(t.slice(a..z)),
        _ => candle_core::bail!("token cross-entropy: targets must be {n} contiguous u32"),
    }
}

/// (loss, lse) per row, f32 on the device.
fn ce_forward(s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let (b, s, v, rows) = super::ce_rows(l1)?;
    let n = b * s;
    let tg = targets_view(s2, l2, n)?;
    let dev = &s1.device;
    // SAFETY: the kernel writes one loss and one lse per row.
    let loss = unsafe { dev.alloc::<f32>(n)? };
    let lse = unsafe { dev.alloc::<f32>(n)? };
    if n == 0 {
        return Ok((loss, lse));
    }
    let off = l1.start_offset();
    macro_rules! launch {
        ($x:expr, $name:expr) => {{
            let x = $x.slice(off..);
            let func = dev.get_or_load_custom_func($name, "rho_token_ce", TOKEN_CE_PTX)?;
            let mut bld = func.builder();
            bld.arg(&x);
            candle_core::builder_arg!(bld, rows.stride_b as i64, rows.stride_s as i64, rows.seq as i64);
            bld.arg(&tg);
            bld.arg(&loss);
            bld.arg(&lse);
            candle_core::builder_arg!(bld, v as i64);
            let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: arguments match token_ce_fwd_* in token_ce.cu; rows lie in the logits.
            unsafe { bld.launch(cfg) }.w()?;
        }};
    }
    match &s1.slice {
        CudaStorageSlice::BF16(x) => launch!(x, "token_ce_fwd_bf16"),
        CudaStorageSlice::F16(x) => launch!(x, "token_ce_fwd_f16"),
        CudaStorageSlice::F32(x) => launch!(x, "token_ce_fwd_f32"),
        _ => candle_core::bail!("token cross-entropy: logits must be f32, bf16 or f16"),
    }
    Ok((loss, lse))
}

const OPTIM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));

fn optim_launch(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (super::optim::launch_blocks(n), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// `adam_moment_*` (optim.cu) in place on `dst`; `g` contiguous, same dtype and length.
pub(crate) fn adam_moment(dst: &mut CudaStorage, dl: &Layout, g: In, beta: f32, gscale: f32, square: bool) -> Result<()> {
    let (d, gr) = (contiguous_range(dl, "adam_moment")?, contiguous_range(g.1, "adam_moment")?);
    let n = d.len();
    if gr.len() != n {
        candle_core::bail!("adam_moment: {n} state elements but {} gradient elements", gr.len());
    }
    if n == 0 {
        return Ok(());
    }
    let dev = dst.device.clone();
    macro_rules! launch {
        ($s:expr, $g:expr, $name:expr) => {{
            let mut s = $s.slice_mut(d.clone());
            let g = $g.slice(gr.clone());
            let func = dev.get_or_load_custom_func($name, "rho_optim", OPTIM_PTX)?;
            let mut b = func.builder();
            b.arg(&mut s);
            b.arg(&g);
            candle_core::builder_arg!(b, n as i64, beta, gscale, square as i32);
            // SAFETY: arguments match adam_moment_* in optim.cu; both views hold n elements.
            unsafe { b.launch(optim_launch(n)) }.w()?;
        }};
    }
    match (&mut dst.slice, &g.0.slice) {
        (CudaStorageSlice::F32(s), CudaStorageSlice::F32(g)) => launch!(s, g, "adam_moment_f32"),
        (CudaStorageSlice::BF16(s), CudaStorageSlice::BF16(g)) => launch!(s, g, "adam_moment_bf16"),
        (CudaStorageSlice::F16(s), CudaStorageSlice::F16(g)) => launch!(s, g, "adam_moment_f16"),
        _ => candle_core::bail!("adam_moment: state and gradient must both be f32, bf16 or f16"),
    }
    Ok(())
}

/// `adam_apply_*` (optim.cu) in place on the weights `dst`; `m`, `v` contiguous, same dtype and length.
pub(crate) fn adam_apply(dst: &mut CudaStorage, dl: &Layout, m: In, v: In, a: super::optim::AdamApply) -> Result<()> {
    let d = contiguous_range(dl, "adam_apply")?;
    let (mr, vr) = (contiguous_range(m.1, "adam_apply")?, contiguous_range(v.1, "adam_apply")?);
    let n = d.len();
    if mr.len() != n || vr.len() != n {
        candle_core::bail!("adam_apply: {n} weights but {} and {} moment elements", mr.len(), vr.len());
    }
    if n == 0 {
        return Ok(());
    }
    let dev = dst.device.clone();
    macro_rules! launch {
        ($w:expr, $m:expr, $v:expr, $name:expr) => {{
            let mut w = $w.slice_mut(d.clone());
            let (m, v) = ($m.slice(mr.clone()), $v.slice(vr.clone()));
            let func = dev.get_or_load_custom_func($name, "rho_optim", OPTIM_PTX)?;
            let mut b = func.builder();
            b.arg(&mut w);
            b.arg(&m);
            b.arg(&v);
            candle_core::builder_arg!(b, n as i64, a.decay, a.step, a.inv_sqrt_bc2, a.eps);
            // SAFETY: arguments match adam_apply_* in optim.cu; the three views hold n elements.
            unsafe { b.launch(optim_launch(n)) }.w()?;
        }};
    }
    match (&mut dst.slice, &m.0.slice, &v.0.slice) {
        (CudaStorageSlice::F32(w), CudaStorageSlice::F32(m), CudaStorageSlice::F32(v)) => launch!(w, m, v, "adam_apply_f32"),
        (CudaStorageSlice::BF16(w), CudaStorageSlice::BF16(m), CudaStorageSlice::BF16(v)) => launch!(w, m, v, "adam_apply_bf16"),
        (CudaStorageSlice::F16(w), CudaStorageSlice::F16(m), CudaStorageSlice::F16(v)) => launch!(w, m, v, "adam_apply_f16"),
        _ => candle_core::bail!("adam_apply: weights and moments must all be f32, bf16 or f16"),
    }
    Ok(())
}

/// `sum_sq_*` (optim.cu): sum(x^2) of a contiguous input as one f32 on the device.
pub(crate) fn sum_sq(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let r = contiguous_range(l, "sum_squares")?;
    let n = r.len();
    let dev = &s.device;
    let mut out = dev.alloc_zeros::<f32>(1)?;
    macro_rules! launch {
        ($x:expr, $name:expr) => {{
            if n > 0 {
                let x = $x.slice(r.clone());
                let func = dev.get_or_load_custom_func($name, "rho_optim", OPTIM_PTX)?;
                let mut b = func.builder();
                b.arg(&x);
                candle_core::builder_arg!(b, n as i64);
                b.arg(&mut out);
                // SAFETY: arguments match sum_sq_* in optim.cu; out is one zeroed f32.
                unsafe { b.launch(optim_launch(n)) }.w()?;
            }
        }};
    }
    match &s.slice {
        CudaStorageSlice::F32(x) => launch!(x, "sum_sq_f32"),
        CudaStorageSlice::BF16(x) => launch!(x, "sum_sq_bf16"),
        CudaStorageSlice::F16(x) => launch!(x, "sum_sq_f16"),
        _ => candle_core::bail!("sum_squares: dtype must be f32, bf16 or f16"),
    }
    Ok(CudaStorage { slice: CudaStorageSlice::F32(out), device: dev.clone() })
}

const NORM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));

/// One block per row of `rms_norm_fwd_*` / `rms_norm_cast_*` (norm.cu): x [rows, h] and w [h]
/// (elements `xr`, `wr` of their slices, contiguous) -> y [rows, h] in TO.
#[allow(clippy::too_many_arguments)]
fn norm_rows<TI: DeviceRepr, TO: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    x: &CudaSlice<TI>,
    xr: std::ops::Range<usize>,
    w: &CudaSlice<TI>,
    wr: std::ops::Range<usize>,
    eps: f32,
) -> Result<CudaSlice<TO>> {
    let h = wr.len();
    let rows = if h == 0 { 0 } else { xr.len() / h };
    // SAFETY: the kernel writes every element of y (rows x h).
    let y = unsafe { dev.alloc::<TO>(xr.len())? };
    if rows > 0 {
        let (xv, wv) = (x.slice(xr), w.slice(wr));
        let func = dev.get_or_load_custom_func(name, "rho_norm", NORM_PTX)?;
        let mut b = func.builder();
        b.arg(&xv);
        b.arg(&wv);
        b.arg(&y);
        candle_core::builder_arg!(b, h as i64, eps);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match rms_norm_fwd_* / rms_norm_cast_* in norm.cu (x and w in TI,
        // y in TO); x and y hold rows x h elements, w h.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(y)
}

/// `rms_norm_fwd_*` (norm.cu): x [rows, h] and w [h] contiguous, one dtype -> y like x.
pub(crate) fn rms_norm_fwd(x: In, w: In, eps: f32) -> Result<CudaStorage> {
    let (xr, wr) = (contiguous_range(x.1, "rms_norm")?, contiguous_range(w.1, "rms_norm")?);
    let dev = &x.0.device;
    let slice = match (&x.0.slice, &w.0.slice) {
        (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => CudaStorageSlice::F32(norm_rows(dev, "rms_norm_fwd_f32", a, xr, b, wr, eps)?),
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => CudaStorageSlice::BF16(norm_rows(dev, "rms_norm_fwd_bf16", a, xr, b, wr, eps)?),
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b)) => CudaStorageSlice::F16(norm_rows(dev, "rms_norm_fwd_f16", a, xr, b, wr, eps)?),
        _ => candle_core::bail!("rms_norm: x and w must both be f32, bf16 or f16"),
    };
    Ok(CudaStorage { slice, device: dev.clone() })
}

/// `rms_norm_cast_*` (norm.cu): x [rows, h] and w [h] f32, contiguous -> y [rows, h] in `out`
/// (bf16 or f16): evaluation's norm of an f32 residual stream.
pub(crate) fn rms_norm_cast(x: In, w: In, eps: f32, out: candle_core::DType) -> Result<CudaStorage> {
    let (xr, wr) = (contiguous_range(x.1, "rms_norm_cast")?, contiguous_range(w.1, "rms_norm_cast")?);
    let dev = &x.0.device;
    let (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(ws)) = (&x.0.slice, &w.0.slice) else {
        candle_core::bail!("rms_norm_cast: x and w must be f32 (got {:?}, {:?})", x.0.dtype(), w.0.dtype());
    };
    let slice = match out {
        candle_core::DType::BF16 => CudaStorageSlice::BF16(norm_rows(dev, "rms_norm_cast_bf16", xs, xr, ws, wr, eps)?),
        candle_core::DType::F16 => CudaStorageSlice::F16(norm_rows(dev, "rms_norm_cast_f16", xs, xr, ws, wr, eps)?),
        other => candle_core::bail!("rms_norm_cast: output dtype {other:?} (bf16 or f16 expected)"),
    };
    Ok(CudaStorage { slice, device: dev.clone() })
}

/// `residual_add_*` (norm.cu): x f32 and d (bf16 or f16) contiguous, one length -> x + d in f32.
pub(crate) fn residual_add(x: In, d: In) -> Result<CudaStorage> {
    let (xr, dr) = (contiguous_range(x.1, "residual_add")?, contiguous_range(d.1, "residual_add")?);
    let n = xr.len();
    if dr.len() != n {
        candle_core::bail!("residual_add: x of {n} and d of {} elements", dr.len());
    }
    let dev = &x.0.device;
    let CudaStorageSlice::F32(xs) = &x.0.slice else {
        candle_core::bail!("residual_add: x must be f32 (got {:?})", x.0.dtype());
    };
    // SAFETY: the kernel writes every element of out.
    let out = unsafe { dev.alloc::<f32>(n)? };
    macro_rules! launch {
        ($d:expr, $name:expr) => {{
            if n > 0 {
                let (xv, dv) = (xs.slice(xr.clone()), $d.slice(dr.clone()));
                let func = dev.get_or_load_custom_func($name, "rho_norm", NORM_PTX)?;
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&dv);
                b.arg(&out);
                candle_core::builder_arg!(b, n as i64);
                // SAFETY: arguments match residual_add_* in norm.cu; x, d, out hold n elements.
                unsafe { b.launch(optim_launch(n)) }.w()?;
            }
        }};
    }
    match &d.0.slice {
        CudaStorageSlice::BF16(ds) => launch!(ds, "residual_add_bf16"),
        CudaStorageSlice::F16(ds) => launch!(ds, "residual_add_f16"),
        _ => candle_core::bail!("residual_add: d must be bf16 or f16 (got {:?})", d.0.dtype()),
    }
    Ok(CudaStorage { slice: CudaStorageSlice::F32(out), device: dev.clone() })
}

/// `rms_norm_bwd_*` (norm.cu): (x, w, dy) contiguous, one dtype -> (dx like x, dw [h] f32).
pub(crate) fn rms_norm_bwd(x: In, w: In, dy: In, eps: f32) -> Result<(CudaStorage, CudaStorage)> {
    let (xr, wr, gr) = (contiguous_range(x.1, "rms_norm")?, contiguous_range(w.1, "rms_norm")?, contiguous_range(dy.1, "rms_norm")?);
    let h = wr.len();
    if h > super::norm::MAX_HIDDEN_CUDA || gr.len() != xr.len() {
        candle_core::bail!("rms_norm backward: h {h} (at most {}), x of {} and dy of {} elements", super::norm::MAX_HIDDEN_CUDA, xr.len(), gr.len());
    }
    let rows = if h == 0 { 0 } else { xr.len() / h };
    let dev = &x.0.device;
    let mut dw = dev.alloc_zeros::<f32>(h.max(1))?;
    macro_rules! launch {
        ($x:expr, $w:expr, $g:expr, $t:ty, $name:expr) => {{
            // SAFETY: the kernel writes every element of dx (every row, by the grid-stride loop).
            let dx = unsafe { dev.alloc::<$t>(xr.len())? };
            if rows > 0 {
                let (xv, wv, gv) = ($x.slice(xr.clone()), $w.slice(wr.clone()), $g.slice(gr.clone()));
                let func = dev.get_or_load_custom_func($name, "rho_norm", NORM_PTX)?;
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&wv);
                b.arg(&gv);
                b.arg(&dx);
                b.arg(&mut dw);
                candle_core::builder_arg!(b, rows as i64, h as i64, eps);
                // enough blocks to fill the GPU, each summing dw over many rows
                let cfg = LaunchConfig { grid_dim: (rows.min(1024) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: arguments match rms_norm_bwd_* in norm.cu; h <= RHO_NORM_MAX_H.
                unsafe { b.launch(cfg) }.w()?;
            }
            dx
        }};
    }
    let slice = match (&x.0.slice, &w.0.slice, &dy.0.slice) {
        (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b), CudaStorageSlice::F32(c)) => CudaStorageSlice::F32(launch!(a, b, c, f32, "rms_norm_bwd_f32")),
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c)) => CudaStorageSlice::BF16(launch!(a, b, c, half::bf16, "rms_norm_bwd_bf16")),
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b), CudaStorageSlice::F16(c)) => CudaStorageSlice::F16(launch!(a, b, c, half::f16, "rms_norm_bwd_f16")),
        _ => candle_core::bail!("rms_norm backward: x, w and dy must all be f32, bf16 or f16"),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, CudaStorage { slice: CudaStorageSlice::F32(dw), device: dev.clone() }))
}

const SWIGLU_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/swiglu.ptx"));

/// `swiglu_fwd_*` (swiglu.cu): g, u contiguous, one dtype and length -> silu(g) u like g.
pub(crate) fn swiglu_fwd(g: In, u: In) -> Result<CudaStorage> {
    let (gr, ur) = (contiguous_range(g.1, "swiglu")?, contiguous_range(u.1, "swiglu")?);
    let n = gr.len();
    if ur.len() != n {
        candle_core::bail!("swiglu: gate of {n} and up of {} elements", ur.len());
    }
    let dev = &g.0.device;
    macro_rules! launch {
        ($g:expr, $u:expr, $t:ty, $name:expr) => {{
            // SAFETY: the kernel writes every element of h.
            let h = unsafe { dev.alloc::<$t>(n)? };
            if n > 0 {
                let (gv, uv) = ($g.slice(gr.clone()), $u.slice(ur.clone()));
                let func = dev.get_or_load_custom_func($name, "rho_swiglu", SWIGLU_PTX)?;
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&h);
                candle_core::builder_arg!(b, n as i64);
                // SAFETY: arguments match swiglu_fwd_* in swiglu.cu; g, u, h hold n elements.
                unsafe { b.launch(optim_launch(n)) }.w()?;
            }
            h
        }};
    }
    let slice = match (&g.0.slice, &u.0.slice) {
        (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => CudaStorageSlice::F32(launch!(a, b, f32, "swiglu_fwd_f32")),
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => CudaStorageSlice::BF16(launch!(a, b, half::bf16, "swiglu_fwd_bf16")),
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b)) => CudaStorageSlice::F16(launch!(a, b, half::f16, "swiglu_fwd_f16")),
        _ => candle_core::bail!("swiglu: gate and up must both be f32, bf16 or f16"),
    };
    Ok(CudaStorage { slice, device: dev.clone() })
}

/// `swiglu_bwd_*` (swiglu.cu): (g, u, dh) contiguous, one dtype and length -> [dg; du] (2 n).
pub(crate) fn swiglu_bwd(g: In, u: In, dh: In) -> Result<CudaStorage> {
    let (gr, ur, dr) = (contiguous_range(g.1, "swiglu")?, contiguous_range(u.1, "swiglu")?, contiguous_range(dh.1, "swiglu")?);
    let n = gr.len();
    if ur.len() != n || dr.len() != n {
        candle_core::bail!("swiglu backward: gate of {n}, up of {} and dh of {} elements", ur.len(), dr.len());
    }
    let dev = &g.0.device;
    macro_rules! launch {
        ($g:expr, $u:expr, $d:expr, $t:ty, $name:expr) => {{
            // SAFETY: the kernel writes every element of dgu (2 n).
            let dgu = unsafe { dev.alloc::<$t>(2 * n)? };
            if n > 0 {
                let (gv, uv, dv) = ($g.slice(gr.clone()), $u.slice(ur.clone()), $d.slice(dr.clone()));
                let func = dev.get_or_load_custom_func($name, "rho_swiglu", SWIGLU_PTX)?;
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&dv);
                b.arg(&dgu);
                candle_core::builder_arg!(b, n as i64);
                // SAFETY: arguments match swiglu_bwd_* in swiglu.cu; dgu holds 2 n elements.
                unsafe { b.launch(optim_launch(n)) }.w()?;
            }
            dgu
        }};
    }
    let slice = match (&g.0.slice, &u.0.slice, &dh.0.slice) {
        (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b), CudaStorageSlice::F32(c)) => CudaStorageSlice::F32(launch!(a, b, c, f32, "swiglu_bwd_f32")),
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c)) => CudaStorageSlice::BF16(launch!(a, b, c, half::bf16, "swiglu_bwd_bf16")),
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b), CudaStorageSlice::F16(c)) => CudaStorageSlice::F16(launch!(a, b, c, half::f16, "swiglu_bwd_f16")),
        _ => candle_core::bail!("swiglu backward: gate, up and dh must all be f32, bf16 or f16"),
    };
    Ok(CudaStorage { slice, device: dev.clone() })
}

const ROPE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));

/// `rope_*` (rope.cu): x [b, s, heads, d] with element strides `st` for the first three dims
/// (the last contiguous), cos and sin [s, r] contiguous, one dtype -> y [b, s, heads, d]
/// contiguous. sign 1: the rotation, -1: its transpose.
pub(crate) fn rope(x: In, st: [usize; 3], dims: [usize; 4], cos: In, sin: In, sign: f32) -> Result<CudaStorage> {
    let (cr, sr) = (contiguous_range(cos.1, "rope")?, contiguous_range(sin.1, "rope")?);
    let [_, s, heads, d] = dims;
    let n: usize = dims.iter().product();
    let rot = if s == 0 { 0 } else { 2 * cr.len() / s };
    if n > i32::MAX as usize || sr.len() != cr.len() || rot > d {
        candle_core::bail!("rope: x {dims:?} ({n} elements, at most 2^31 - 1), cos of {} and sin of {} elements", cr.len(), sr.len());
    }
    let dev = &x.0.device;
    let off = x.1.start_offset();
    macro_rules! launch {
        ($x:expr, $c:expr, $s:expr, $t:ty, $name:expr) => {{
            // SAFETY: the kernel writes every element of y.
            let y = unsafe { dev.alloc::<$t>(n)? };
            if n > 0 {
                let (xv, cv, sv) = ($x.slice(off..), $c.slice(cr.clone()), $s.slice(sr.clone()));
                let func = dev.get_or_load_custom_func($name, "rho_rope", ROPE_PTX)?;
                let mut b = func.builder();
                b.arg(&xv);
                candle_core::builder_arg!(b, st[0] as i64, st[1] as i64, st[2] as i64);
                b.arg(&cv);
                b.arg(&sv);
                b.arg(&y);
                candle_core::builder_arg!(b, s as i32, heads as i32, d as i32, rot as i32, sign, n as i32);
                // SAFETY: arguments match rope_* in rope.cu; x's view covers every strided row
                // (candle's layout), y holds n elements, cos and sin s x rot / 2.
                unsafe { b.launch(optim_launch(n)) }.w()?;
            }
            y
        }};
    }
    let slice = match (&x.0.slice, &cos.0.slice, &sin.0.slice) {
        (CudaStorageSlice::F32(a), CudaStorageSlice::F32(b), CudaStorageSlice::F32(c)) => CudaStorageSlice::F32(launch!(a, b, c, f32, "rope_f32")),
        (CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b), CudaStorageSlice::BF16(c)) => CudaStorageSlice::BF16(launch!(a, b, c, half::bf16, "rope_bf16")),
        (CudaStorageSlice::F16(a), CudaStorageSlice::F16(b), CudaStorageSlice::F16(c)) => CudaStorageSlice::F16(launch!(a, b, c, half::f16, "rope_f16")),
        _ => candle_core::bail!("rope: x, cos and sin must all be f32, bf16 or f16"),
    };
    Ok(CudaStorage { slice, device: dev.clone() })
}
