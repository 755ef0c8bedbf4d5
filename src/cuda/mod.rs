//! rho's own GPU kernels (issue 7) and their CPU references.
//!
//! | kernel (src/cuda/kernels)       | what                                                    | CPU reference |
//! |---------------------------------|---------------------------------------------------------|---------------|
//! | `attention.cu` flash_attn_fwd   | causal grouped-query attention, optionally in a sliding window, bf16/f16, head dim 32/64/80/128/256, never [s, s] | [`reference::causal_attention`] |
//! | `attention.cu` flash_attn_bwd   | its gradients (training), head dim 32/64/80/128        | [`reference::causal_attention_backward`] |
//! | `token_ce.cu` token_ce_fwd      | per-token f32 cross-entropy streamed over the vocabulary | [`reference::token_ce`], `model::loss::FusedTokenLoss` |
//! | `token_ce.cu` token_ce_bwd      | its gradient with respect to the logits                 | [`reference::token_ce_backward`] |
//! | `norm.cu` rms_norm_fwd, rms_norm_bwd | RMSNorm with its backward (training) | [`norm`] (CPU loops), candle's autograd of the composed ops |
//! | `norm.cu` rms_norm_cast, residual_add | evaluation's f32 residual stream of a bf16/f16 model: its norm (output rounded once to the model's dtype) and the add of a sublayer's output | [`norm`] (CPU loops) |
//! | `optim.cu` adam_moment, adam_apply, sum_sq | AdamW in place, gradient norms (training) | [`optim`] (CPU loops), `train::optim::AdamW::step_composed` |
//! | `swiglu.cu` swiglu_fwd, swiglu_bwd | silu(gate) * up with its backward (evaluation, training) | [`swiglu`] (CPU loops), candle's autograd of the composed ops |
//! | `rope.cu` rope | rotary embedding on [b, s, heads, d] views, forward and backward | [`rope`] (CPU loops), candle-nn's rope |
//!
//! The attention op's keys (causal, optionally in a sliding window: [`reference::attended_keys`])
//! are those of the composed path's mask, [`mask::causal_mask`].
//!
//! The same kernel source is compiled twice: to PTX by nvcc with `--features cuda`
//! (build.rs; loaded by [`flash_attention`] and the loss on CUDA tensors) and, always, for a
//! CPU emulator ([`emu`]) so that `cargo test` runs every kernel against its reference on a
//! machine without a GPU. `rho bench kernels --device cuda:0` runs the same comparisons on
//! the GPU.

pub mod attn_cpu;
pub mod check;
pub mod emu;
pub mod mask;
pub mod norm;
pub mod optim;
pub mod reference;
pub mod rope;
pub mod swiglu;
#[cfg(feature = "cuda")]
pub(crate) mod ops;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use reference::{AttnShape, Rows, Strides};

/// An element type of the CPU implementations of rho's ops: f32 arithmetic on f32, bf16 or
/// f16 storage, one rounding per stored value (as the kernels).
pub(crate) trait Elem: Copy + Send + Sync {
    fn f(self) -> f32;
    fn of(x: f32) -> Self;
}
impl Elem for f32 {
    fn f(self) -> f32 {
        self
    }
    fn of(x: f32) -> Self {
        x
    }
}
impl Elem for half::bf16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn of(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}
impl Elem for half::f16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn of(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}

/// rho's fused ops, each of which `RHO_FUSED_KERNELS` can turn off (plain candle ops
/// instead) for A/B benchmarks and bisecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    /// Flash attention on CUDA (evaluation and training).
    Attention = 0,
    /// The streamed per-token cross-entropy on CUDA (and its backward).
    Loss = 1,
    /// RMSNorm with its backward in training (CUDA kernels, CPU loops); in evaluation of a
    /// bf16 / f16 model, the f32 residual stream's norm and add (`norm::rms_norm_cast`,
    /// `norm::residual_add`).
    Norm = 2,
    /// AdamW and the gradient norm in place (CUDA kernels, CPU loops).
    Optim = 3,
    /// silu(gate) * up with its backward (CUDA kernels, CPU loops; evaluation and training).
    Swiglu = 4,
    /// RoPE on [b, s, heads, d] with its backward (CUDA kernel, CPU loops; evaluation and training).
    Rope = 5,
}

impl Fused {
    pub const ALL: [Fused; 6] = [Fused::Attention, Fused::Loss, Fused::Norm, Fused::Optim, Fused::Swiglu, Fused::Rope];
    pub fn name(self) -> &'static str {
        match self {
            Fused::Attention => "attention",
            Fused::Loss => "loss",
            Fused::Norm => "norm",
            Fused::Optim => "optim",
            Fused::Swiglu => "swiglu",
            Fused::Rope => "rope",
        }
    }
}

/// Which of [`Fused::ALL`] are on, indexed by `Fused as usize`.
pub type FusedSet = [bool; Fused::ALL.len()];

/// The value of `RHO_FUSED_KERNELS`: unset, `1`, `on`, `true` or `all`: every fused op;
/// `0`, `off`, `false` or `none`: none; else a comma-separated list of [`Fused`] names
/// (`attention,optim`): only those. Returns which are on, indexed by `Fused as usize`.
pub fn parse_fused(v: Option<&str>) -> std::result::Result<FusedSet, String> {
    match v.map(str::trim) {
        None | Some("1" | "on" | "true" | "all") => Ok([true; Fused::ALL.len()]),
        Some("0" | "off" | "false" | "none") => Ok([false; Fused::ALL.len()]),
        Some(list) => {
            let mut on = [false; Fused::ALL.len()];
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match Fused::ALL.iter().find(|k| k.name() == name) {
                    Some(&k) => on[k as usize] = true,
                    None => {
                        let names: Vec<_> = Fused::ALL.iter().map(|k| k.name()).collect();
                        return Err(format!("`{name}` is not one of {} (or 0 / 1)", names.join(", ")));
                    }
                }
            }
            Ok(on)
        }
    }
}

/// Whether the fused op `k` may be used (`RHO_FUSED_KERNELS`, see [`parse_fused`]; the
/// CLI rejects a bad value before any work).
pub fn fused_enabled(k: Fused) -> bool {
    if let Some(on) = FUSED_OVERRIDE.with(|o| o.get()) {
        return on[k as usize];
    }
    let v = std::env::var("RHO_FUSED_KERNELS").ok();
    parse_fused(v.as_deref()).map(|on| on[k as usize]).unwrap_or(true)
}

thread_local! {
    static FUSED_OVERRIDE: std::cell::Cell<Option<FusedSet>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with [`fused_enabled`] answering from `on` on this thread, whatever
/// `RHO_FUSED_KERNELS` says (tests compare the fused and composed paths in one process).
pub fn with_fused<R>(on: FusedSet, f: impl FnOnce() -> R) -> R {
    with_cell(&FUSED_OVERRIDE, Some(on), f)
}

/// Run `f` with the thread-local `cell` set to `v`, restored afterwards (also on a panic).
pub(crate) fn with_cell<T: Copy + 'static, R>(cell: &'static std::thread::LocalKey<std::cell::Cell<T>>, v: T, f: impl FnOnce() -> R) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(cell, cell.with(|c| c.replace(v)));
    f()
}

/// `RHO_CUDA_POOL`: what the CUDA memory pool does with freed memory at a synchronisation.
/// Unset or `keep`: keeps it for the next allocations (rho's setting, [`configure_pool`]);
/// `release`: the driver's default (returned to the system at every synchronisation, so
/// that each evaluation batch or training step maps its activations' memory again), for A/B
/// runs. Returns whether to keep.
pub fn parse_pool(v: Option<&str>) -> std::result::Result<bool, String> {
    match v.map(str::trim) {
        None | Some("keep") => Ok(true),
        Some("release") => Ok(false),
        Some(other) => Err(format!("`{other}` is not keep or release")),
    }
}

/// `keep` or `release`: the `RHO_CUDA_POOL` setting in use (for the benchmarks' output).
pub fn pool_name() -> &'static str {
    match parse_pool(std::env::var("RHO_CUDA_POOL").ok().as_deref()) {
        Ok(false) => "release",
        _ => "keep",
    }
}

/// Sets the release threshold of `dev`'s current memory pool (the one candle's stream-ordered
/// allocations come from) per `RHO_CUDA_POOL` ([`parse_pool`]): by default to the maximum, so
/// that memory freed during a forward pass stays in the pool across the host
/// synchronisations that end each batch and step (the driver's default, 0, unmaps it at each
/// and the next batch maps it again). The memory stays reserved for this process, as in
/// PyTorch's caching allocator. A no-op on other devices; returns the threshold set.
pub fn configure_pool(dev: &candle_core::Device) -> Result<Option<u64>> {
    let keep = parse_pool(std::env::var("RHO_CUDA_POOL").ok().as_deref()).map_err(candle_core::Error::Msg)?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        use candle_core::cuda_backend::cudarc::driver::{result, sys};
        let ctx = d.cuda_stream().context().clone();
        let mut threshold: u64 = if keep { u64::MAX } else { 0 };
        // SAFETY: the device comes from the context candle created; the attribute takes a u64.
        unsafe {
            ctx.bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("CUDA memory pool: {e}")))?;
            let pool = result::device::get_mem_pool(ctx.cu_device()).map_err(|e| candle_core::Error::Msg(format!("CUDA memory pool: {e}")))?;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
            .map_err(|e| candle_core::Error::Msg(format!("CUDA memory pool: setting the release threshold: {e}")))?;
        }
        return Ok(Some(threshold));
    }
    let _ = (dev, keep);
    Ok(None)
}

/// Head dims the flash attention kernel is compiled for.
pub const FLASH_HEAD_DIMS: [usize; 5] = [32, 64, 80, 128, 256];

/// Head dims the flash attention backward (and the training forward) is compiled for:
/// Pythia-14m/31m (32), TinyLlama, Pythia-70m..410m, GPT-2 (64), Pythia-2.8b, Phi-2 (80),
/// Llama, Mistral, Qwen2-1.5b+, Pythia-1.4b/6.9b (128). Pythia-1b's 256 trains through
/// candle's differentiable ops (the kernel's per-thread dK, dV and dQ accumulators would be
/// 384 registers).
pub const FLASH_BWD_HEAD_DIMS: [usize; 4] = [32, 64, 80, 128];

/// Keys per block of the backward kernel for head dim `d` (attention.cu's RHO_FLASH_BWD lines;
/// the block has `2 x` that many threads).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn flash_bwd_keys_per_block(d: usize) -> usize {
    if d <= 64 {
        64
    } else {
        32
    }
}

/// Causal grouped-query attention without the [s, s] matrix.
///
/// q: [b, s, n_heads, d], k and v: [b, s, n_kv_heads, d] (any strides; the head dim
/// contiguous), d in [`FLASH_HEAD_DIMS`] on CUDA. Returns [b, s, n_heads, d] contiguous,
/// out[b,i,h] = softmax_j(scale q[b,i,h].k[b,j,h/G]) . v[b,j,h/G] over the keys j <= i, G = n_heads / n_kv_heads.
/// `window`: a sliding window of w >= 1 keys (transformers' `sliding_window`): query i attends
/// only keys i - w < j <= i (itself and the w - 1 before it); `None`: every key j <= i. A
/// window of 0 is an error; one of at least s keys is no window.
/// CUDA: the flash kernel (bf16 / f16). CPU: [`attn_cpu`] (f32 arithmetic, any head dim).
/// No backward pass (evaluation); [`flash_attention_train`] has one.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, window: Option<usize>) -> Result<Tensor> {
    flash_attention_variant(q, k, v, scale, FlashVariant::from_env(), window)
}

/// Refuses a sliding window of 0 keys (every query attends at least itself).
fn check_window(window: Option<usize>) -> Result<()> {
    if window == Some(0) {
        candle_core::bail!("flash attention: a sliding window must be at least 1 key (got 0)");
    }
    Ok(())
}

/// The `window` argument of the attention kernels (attention.cu, the emulator): 0 for none,
/// and for a window of at least `seq` keys (it masks nothing: the no-window path).
pub(crate) fn kernel_window(window: Option<usize>, seq: usize) -> i32 {
    match window {
        Some(w) if w < seq => w as i32,
        _ => 0,
    }
}

/// [`flash_attention`] with a backward pass (training): the forward also keeps each row's
/// log-sum-exp, the backward is `flash_attn_bwd` on CUDA (head dims in
/// [`FLASH_BWD_HEAD_DIMS`]) and [`attn_cpu::attention_backward`] on CPU, both in the same
/// sliding `window`. Gradients in the inputs' dtype.
pub fn flash_attention_train(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, window: Option<usize>) -> Result<Tensor> {
    check_window(window)?;
    let aligned = |t: &Tensor| if aligned16(t) { Ok(t.clone()) } else { t.contiguous() };
    // the backward loads q and k, v 16 bytes at a time
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    let op = FlashAttn { scale, window, variant: FlashVariant::from_env(), train: true, lse: std::sync::Mutex::new(None) };
    q.apply_op3(&k, &v, op)
}

/// Rows of a [b, s, h, d] tensor start on 16-byte boundaries (16-bit elements).
fn aligned16(t: &Tensor) -> bool {
    t.layout().start_offset() % 8 == 0 && t.stride().iter().take(3).all(|s| s % 8 == 0)
}

/// The compiled variants of the flash attention kernel (attention.cu's RHO_FLASH lines).
/// They differ in speed only; which is fastest is measured by `rho bench kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashVariant {
    /// 4 warps, 64 query rows per block, registers for 3 blocks per SM (the default).
    W4,
    /// 4 warps, registers capped for 4 blocks per SM (head dim 64; W4 otherwise).
    W4M4,
    /// 8 warps, 128 query rows per block (head dim 64; W4 otherwise).
    W8,
}

impl FlashVariant {
    pub const ALL: [FlashVariant; 3] = [FlashVariant::W4, FlashVariant::W4M4, FlashVariant::W8];

    /// `RHO_FLASH_VARIANT=w4|w4m4|w8` (default w4).
    pub fn from_env() -> Self {
        match std::env::var("RHO_FLASH_VARIANT").as_deref() {
            Ok("w8") => FlashVariant::W8,
            Ok("w4m4") => FlashVariant::W4M4,
            _ => FlashVariant::W4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FlashVariant::W4 => "w4",
            FlashVariant::W4M4 => "w4m4",
            FlashVariant::W8 => "w8",
        }
    }
    /// Warps per block for this head dim.
    pub fn warps(self, head_dim: usize) -> usize {
        if self == FlashVariant::W8 && head_dim == 64 {
            8
        } else {
            4
        }
    }
    /// The kernel's name suffix for this head dim (`flash_attn_fwd_bf16_d64` + suffix).
    pub fn suffix(self, head_dim: usize) -> &'static str {
        match (self, head_dim) {
            (FlashVariant::W8, 64) => "_w8",
            (FlashVariant::W4M4, 64) => "_m4",
            _ => "",
        }
    }
}

/// [`flash_attention`] with the kernel variant chosen. K and V whose rows are not 16-byte
/// aligned are copied first (the kernel loads them 16 bytes at a time).
pub fn flash_attention_variant(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, variant: FlashVariant, window: Option<usize>) -> Result<Tensor> {
    check_window(window)?;
    let k = if aligned16(k) { k.clone() } else { k.contiguous()? };
    let v = if aligned16(v) { v.clone() } else { v.contiguous()? };
    q.apply_op3_no_bwd(&k, &v, &FlashAttn { scale, window, variant, train: false, lse: std::sync::Mutex::new(None) })
}

pub(crate) struct FlashAttn {
    pub scale: f32,
    /// The sliding window (keys i - w < j <= i), forward and backward; `None`: causal only.
    pub window: Option<usize>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub variant: FlashVariant,
    /// Keep each row's log2 normaliser for the backward (training).
    pub train: bool,
    /// That normaliser, [b, s, n_heads] f32, set by the forward.
    pub lse: std::sync::Mutex<Option<Tensor>>,
}

/// Shape and strides of the three inputs, checked: q [b, s, nh, d], k/v [b, s, nkv, d].
pub(crate) fn attn_layouts(l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(AttnShape, [Strides; 3])> {
    let dims = |l: &Layout, name: &str| -> Result<([usize; 4], Strides)> {
        match (l.dims(), l.stride()) {
            (&[b, s, h, d], &[sb, ss, sh, sd]) => {
                if sd != 1 && d > 1 {
                    candle_core::bail!("flash attention: {name}'s head dim must be contiguous (strides {:?})", l.stride());
                }
                Ok(([b, s, h, d], Strides { batch: sb, seq: ss, head: sh }))
            }
            (d, _) => candle_core::bail!("flash attention: {name} must be [batch, seq, heads, head_dim], got {d:?}"),
        }
    };
    let (qd, qs) = dims(l1, "q")?;
    let (kd, ks) = dims(l2, "k")?;
    let (vd, vs) = dims(l3, "v")?;
    if kd != vd || qd[0] != kd[0] || qd[1] != kd[1] || qd[3] != kd[3] {
        candle_core::bail!("flash attention: q {qd:?}, k {kd:?} and v {vd:?} do not match (k and v [b, s, n_kv_heads, d] like q)");
    }
    let shape = AttnShape { batch: qd[0], seq: qd[1], n_heads: qd[2], n_kv_heads: kd[2], head_dim: qd[3] };
    if shape.n_kv_heads == 0 || shape.n_heads % shape.n_kv_heads != 0 {
        candle_core::bail!("flash attention: {} query heads are not a multiple of {} key/value heads", shape.n_heads, shape.n_kv_heads);
    }
    Ok((shape, [qs, ks, vs]))
}

/// f32 values as CPU storage of `dtype` (bf16 / f16 rounded to nearest).
fn cpu_storage(dtype: DType, x: Vec<f32>) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(x.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(x.into_iter().map(half::f16::from_f32).collect()),
        _ => CpuStorage::F32(x),
    }
}

fn cpu_f32(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let o = l.start_offset();
    Ok(match s {
        CpuStorage::F32(v) => v[o..].to_vec(),
        CpuStorage::BF16(v) => v[o..].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F16(v) => v[o..].iter().map(|x| x.to_f32()).collect(),
        _ => candle_core::bail!("rho kernels: inputs must be f32, bf16 or f16, got {:?}", s.dtype()),
    })
}

impl CustomOp3 for FlashAttn {
    fn name(&self) -> &'static str {
        "rho-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (shape, [qs, ks, vs]) = attn_layouts(l1, l2, l3)?;
        if s1.dtype() != s2.dtype() || s1.dtype() != s3.dtype() {
            candle_core::bail!("flash attention: q, k, v dtypes differ");
        }
        let (q, k, v) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        shape
            .check(&[("q", q.len(), qs, shape.n_heads), ("k", k.len(), ks, shape.n_kv_heads), ("v", v.len(), vs, shape.n_kv_heads)])
            .map_err(|e| candle_core::Error::Msg(format!("flash attention: {e}")))?;
        let (o, lse) = attn_cpu::attention_lse(shape, &q, qs, &k, ks, &v, vs, self.scale, self.window);
        if self.train {
            let t = Tensor::from_vec(lse, (shape.batch, shape.seq, shape.n_heads), &candle_core::Device::Cpu)?;
            *self.lse.lock().unwrap() = Some(t);
        }
        Ok((cpu_storage(s1.dtype(), o), Shape::from((shape.batch, shape.seq, shape.n_heads, shape.head_dim))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (o, shape, lse) = ops::flash_attn_fwd(self.scale, self.window, self.variant, self.train, s1, l1, s2, l2, s3, l3)?;
        if let Some(lse) = lse {
            let d = shape.dims();
            let t = Tensor::from_storage(candle_core::Storage::Cuda(lse), (d[0], d[1], d[2]), candle_core::op::BackpropOp::none(), false);
            *self.lse.lock().unwrap() = Some(t);
        }
        Ok((o, shape))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, dout: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // cloned, not taken: a graph may be differentiated more than once
        let lse = self.lse.lock().unwrap().clone();
        let Some(lse) = lse else { candle_core::bail!("flash attention backward: the forward kept no normalisers (not a training call)") };
        let (dq, dk, dv) = if q.device().is_cpu() {
            flash_backward_cpu(self.scale, self.window, q, k, v, o, dout, &lse)?
        } else {
            flash_backward_gpu(self.scale, self.window, q, k, v, o, dout, &lse)?
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The backward on CPU ([`attn_cpu::attention_backward`], f32), from the forward's output `o`
/// and normalisers `lse2`; gradients in the inputs' dtype.
#[allow(clippy::too_many_arguments)]
fn flash_backward_cpu(scale: f32, window: Option<usize>, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, dout: &Tensor, lse2: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let f32_of = |t: &Tensor| -> Result<(Vec<f32>, Strides)> {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let (_, s, h, d) = t.dims4()?;
        Ok((t.flatten_all()?.to_vec1::<f32>()?, Strides::contiguous(s, h, d)))
    };
    let (b, s, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let shape = AttnShape { batch: b, seq: s, n_heads: nh, n_kv_heads: nkv, head_dim: d };
    let ((qf, qs), (kf, ks), (vf, vs), (gf, gs), (of, _)) = (f32_of(q)?, f32_of(k)?, f32_of(v)?, f32_of(dout)?, f32_of(o)?);
    let lse2 = lse2.flatten_all()?.to_vec1::<f32>()?;
    let (dq, dk, dv) = attn_cpu::attention_backward(shape, &qf, qs, &kf, ks, &vf, vs, &of, &lse2, &gf, gs, scale, window);
    let dev = q.device();
    Ok((
        Tensor::from_vec(dq, (b, s, nh, d), dev)?.to_dtype(q.dtype())?,
        Tensor::from_vec(dk, (b, s, nkv, d), dev)?.to_dtype(k.dtype())?,
        Tensor::from_vec(dv, (b, s, nkv, d), dev)?.to_dtype(v.dtype())?,
    ))
}

/// The backward on CUDA: D = rowsum(dout * o) in f32, then `flash_attn_bwd`.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn flash_backward_gpu(scale: f32, window: Option<usize>, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, dout: &Tensor, lse: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    use candle_core::op::BackpropOp;
    use candle_core::Storage;
    let dout = if aligned16(dout) { dout.clone() } else { dout.contiguous()? };
    let dsum = (dout.to_dtype(DType::F32)? * o.to_dtype(DType::F32)?)?.sum(3)?.contiguous()?; // [b, s, nh]
    let (b, s, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let (dq, dk, dv) = {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = dout.storage_and_layout();
        let (ls, ll) = lse.storage_and_layout();
        let (ds, dl) = dsum.storage_and_layout();
        let (Storage::Cuda(qs), Storage::Cuda(ks), Storage::Cuda(vs), Storage::Cuda(gs), Storage::Cuda(ls), Storage::Cuda(ds)) = (&*qs, &*ks, &*vs, &*gs, &*ls, &*ds) else {
            candle_core::bail!("flash attention backward: every input must be on the GPU")
        };
        ops::flash_attn_bwd(scale, window, (qs, ql), (ks, kl), (vs, vl), (gs, gl), (ls, ll), (ds, dl))?
    };
    let dq = Tensor::from_storage(Storage::Cuda(dq), (b, s, nh, d), BackpropOp::none(), false);
    let dk = Tensor::from_storage(Storage::Cuda(dk), (b, s, nkv, d), BackpropOp::none(), false);
    let dv = Tensor::from_storage(Storage::Cuda(dv), (b, s, nkv, d), BackpropOp::none(), false);
    Ok((dq.to_dtype(q.dtype())?, dk, dv))
}

#[cfg(not(feature = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn flash_backward_gpu(_: f32, _: Option<usize>, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    candle_core::bail!("flash attention backward: this build has no CUDA (--features cuda)")
}

/// Per-token cross-entropy with a backward pass, for training: logits [b, s, vocab]
/// (f32 / bf16 / f16, the vocab dim contiguous), targets [b, s] u32 -> [b, s] f32.
/// CUDA: `token_ce_fwd`, and for the gradient `token_ce_bwd` (the gradient with respect to
/// the logits in their own dtype: no f32 copy of [b, s, vocab] is ever made). CPU: the
/// f64 references. Targets must lie in the vocabulary (checked).
pub fn token_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (logits, targets) = crate::model::loss::fused_inputs(logits, targets, "token_cross_entropy")?;
    // the same op as evaluation's loss (`token_loss_eval`), with its backward
    logits.apply_op2(&targets, crate::model::loss::FusedTokenLoss)
}

/// The backward of `FusedTokenLoss`: d loss / d logits for the loss gradient `grad`.
pub(crate) fn token_ce_grad(logits: &Tensor, targets: &Tensor, grad: &Tensor) -> Result<Tensor> {
    logits.apply_op3_no_bwd(targets, &grad.to_dtype(DType::F32)?.contiguous()?, &TokenCeGrad)
}

/// Layout of [b, s, vocab] logits as rows, checked.
pub(crate) fn ce_rows(l: &Layout) -> Result<(usize, usize, usize, Rows)> {
    match (l.dims(), l.stride()) {
        (&[b, s, v], &[sb, ss, sv]) => {
            if sv != 1 && v > 1 {
                candle_core::bail!("token cross-entropy: the vocabulary dim must be contiguous (strides {:?})", l.stride());
            }
            Ok((b, s, v, Rows { seq: s.max(1), stride_b: sb, stride_s: ss }))
        }
        (d, _) => candle_core::bail!("token cross-entropy: logits must be [b, s, vocab], got {d:?}"),
    }
}

/// The elements of a contiguous layout (start..end in its storage), or an error naming `what`.
pub(crate) fn contiguous_range(l: &Layout, what: &str) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(a..z),
        None => candle_core::bail!("{what}: inputs must be contiguous (shape {:?}, stride {:?})", l.dims(), l.stride()),
    }
}

pub(crate) fn cpu_targets<'a>(s: &'a CpuStorage, l: &Layout, n: usize) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(t), Some((a, z))) if z - a == n => Ok(&t[a..z]),
        _ => candle_core::bail!("token cross-entropy: targets must be {n} contiguous u32"),
    }
}

/// (logits [b, s, vocab], targets [b, s], dloss [b, s] f32) -> dlogits [b, s, vocab] contiguous,
/// in the logits' dtype.
struct TokenCeGrad;

/// The CPU backward of the token cross-entropy, rows in parallel: per row (read from `x` at
/// `rows.at(r)`, `vocab` contiguous elements) the forward's log-sum-exp again
/// (`loss::max_and_sum_exp`, as `FusedTokenLoss`), then
/// d[c] = (exp(x[c] - lse) - [c == target]) g[r], rounded once to T. The row is read three
/// times while it is in cache and the gradient written once: against the ~25 passes over
/// [tokens, vocab] f32 of `per_token_loss`'s graph and its gradients.
fn token_ce_grad_cpu<T: Elem>(x: &[T], rows: Rows, targets: &[u32], g: &[f32], vocab: usize) -> Result<Vec<T>> {
    use rayon::prelude::*;
    let mut out = vec![T::of(0.0); targets.len() * vocab];
    if vocab == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(vocab).enumerate().try_for_each(|(r, d)| -> Result<()> {
        let t = targets[r] as usize;
        if t >= vocab {
            candle_core::bail!("token cross-entropy: target id {t} is outside the vocabulary of {vocab}");
        }
        let row = &x[rows.at(r)..rows.at(r) + vocab];
        let (m, sum) = crate::model::loss::max_and_sum_exp(row, |e: T| e.f());
        let lse = m + sum.ln() as f32;
        let gr = g[r];
        for (o, &e) in d.iter_mut().zip(row) {
            *o = T::of((e.f() - lse).exp() * gr);
        }
        d[t] = T::of(((row[t].f() - lse).exp() - 1.0) * gr);
        Ok(())
    })?;
    Ok(out)
}

impl CustomOp3 for TokenCeGrad {
    fn name(&self) -> &'static str {
        "rho-token-ce-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, v, rows) = ce_rows(l1)?;
        let t = cpu_targets(s2, l2, b * s)?;
        let g = match (s3, l3.contiguous_offsets()) {
            (CpuStorage::F32(g), Some((a, z))) if z - a == b * s => &g[a..z],
            _ => candle_core::bail!("token cross-entropy: the loss gradient must be {} contiguous f32", b * s),
        };
        let off = l1.start_offset();
        let d = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(token_ce_grad_cpu(&x[off..], rows, t, g, v)?),
            CpuStorage::BF16(x) => CpuStorage::BF16(token_ce_grad_cpu(&x[off..], rows, t, g, v)?),
            CpuStorage::F16(x) => CpuStorage::F16(token_ce_grad_cpu(&x[off..], rows, t, g, v)?),
            _ => candle_core::bail!("token cross-entropy: logits must be f32, bf16 or f16, got {:?}", s1.dtype()),
        };
        Ok((d, Shape::from((b, s, v))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        ops::token_ce_bwd(s1, l1, s2, l2, s3, l3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(name, type, D, BC, ...)` arguments of every `MACRO(` line of `src`.
    fn macro_lines<'a>(src: &'a str, mac: &str) -> Vec<Vec<&'a str>> {
        src.lines()
            .filter_map(|l| l.trim().strip_prefix(mac)?.strip_prefix('('))
            .filter_map(|l| l.strip_suffix(')'))
            .map(|args| args.split(',').map(str::trim).collect())
            .collect()
    }

    #[test]
    fn compiled_attention_kernels_are_the_ones_the_launchers_name() {
        // attention.cu's instantiations, the emulator harness's and the Rust launchers' tables
        // (FLASH_HEAD_DIMS, FLASH_BWD_HEAD_DIMS, flash_bwd_keys_per_block) must agree: a head dim
        // the launcher accepts without a kernel fails only on a GPU.
        let cu = include_str!("kernels/attention.cu");
        let harness = include_str!("emu/harness.cpp");
        let bwd = macro_lines(cu, "RHO_FLASH_BWD");
        let emu_bwd = macro_lines(harness, "RHO_EMU_BWD");
        let fwd = macro_lines(cu, "RHO_FLASH");
        for dt in ["bf16", "f16"] {
            let mut dims: Vec<usize> = bwd.iter().filter(|a| a[1] == format!("rho_{dt}")).map(|a| a[2].parse().unwrap()).collect();
            dims.sort();
            assert_eq!(dims, FLASH_BWD_HEAD_DIMS, "{dt} backward kernels");
            let mut lse: Vec<usize> = fwd.iter().filter(|a| a[1] == format!("rho_{dt}") && a[6] == "true").map(|a| a[2].parse().unwrap()).collect();
            lse.sort();
            assert_eq!(lse, FLASH_BWD_HEAD_DIMS, "{dt} training forwards");
            let mut eval: Vec<usize> = fwd.iter().filter(|a| a[1] == format!("rho_{dt}") && a[6] == "false").map(|a| a[2].parse().unwrap()).collect();
            eval.dedup();
            eval.sort();
            eval.dedup();
            assert_eq!(eval, FLASH_HEAD_DIMS, "{dt} evaluation forwards");
        }
        for a in &bwd {
            let (d, bc): (usize, usize) = (a[2].parse().unwrap(), a[3].parse().unwrap());
            assert_eq!(a[0], format!("flash_attn_bwd_{}_d{d}", &a[1][4..]), "kernel name");
            assert_eq!(bc, flash_bwd_keys_per_block(d), "{}: keys per block", a[0]);
            assert!(emu_bwd.iter().any(|e| e[1] == a[1] && e[2] == a[2] && e[3] == a[3]), "{} is not in the emulator harness", a[0]);
        }
        assert_eq!(emu_bwd.len(), bwd.len(), "emulator harness backward lines");
    }

    #[test]
    fn fused_switch_parses_all_none_and_lists() {
        assert_eq!(parse_fused(None), Ok([true; 6]));
        assert_eq!(parse_fused(Some("0")), Ok([false; 6]));
        assert_eq!(parse_fused(Some("attention, optim")), Ok([true, false, false, true, false, false]));
        assert_eq!(parse_fused(Some("loss,norm,rope")), Ok([false, true, true, false, false, true]));
        assert_eq!(parse_fused(Some("swiglu")), Ok([false, false, false, false, true, false]));
        let e = parse_fused(Some("attention,flash")).unwrap_err();
        assert!(e.contains("`flash`") && e.contains("attention, loss, norm, optim, swiglu, rope"), "{e}");
    }
}
