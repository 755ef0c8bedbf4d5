//! Checkpoint weights, in f32, f16 or bf16: safetensors (`model.safetensors`, or sharded
//! with `model.safetensors.index.json`) or PyTorch pickles written by `torch.save`
//! (`pytorch_model.bin`, or sharded with `pytorch_model.bin.index.json`; `model.bin`,
//! `model.pt`), read by our own reader, which never runs anything from the file
//! (`super::pickle`). Where a folder holds both, safetensors wins. Files are
//! memory-mapped and their headers validated; tensors are read only when asked for (the
//! buffers old checkpoints carry, `attention.bias`, `rotary_emb.inv_freq`, ..., are never
//! read); every tensor is checked against the shape the config implies, and errors name
//! the file.

use super::pickle;
use crate::error::{Error, Result, WithPath};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The memory-mapped weight files of one checkpoint.
pub struct Weights {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// tensor name -> its place in a file
    index: HashMap<String, Entry>,
}

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// byte range of the data inside the mapped file: the tensor's bytes when it is
    /// contiguous; from its first element to the end of its storage when `strides` is set
    start: usize,
    end: usize,
    /// element strides of a non-contiguous tensor (a pickle's transposed weight or slice)
    strides: Option<Vec<usize>>,
}

/// The shards an index (`*.index.json`) lists: every name must stay inside the folder.
fn index_shards(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let bytes = crate::limits::read_bounded(index, crate::limits::MAX_JSON_BYTES, "a safetensors index")?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_path(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "no `weight_map` object in the index"))?;
    let mut files: Vec<String> = Vec::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| Error::file(index, format!("weight_map entry `{name}` is not a file name")))?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(Error::file(index, format!("weight_map entry `{name}` points outside the folder: `{f}`")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    if files.is_empty() {
        return Err(Error::file(index, "the index lists no weight files"));
    }
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for p in &paths {
        if !p.exists() {
            return Err(Error::file(p, format!("shard listed in {} is missing", index.display())));
        }
        if !p.is_file() {
            return Err(Error::file(p, format!("shard listed in {} is not a file", index.display())));
        }
    }
    Ok(paths)
}

/// Find the weight files of a checkpoint folder: safetensors first (an index, then
/// `model.safetensors`, then any `*.safetensors`), then PyTorch pickles (an index, then
/// `pytorch_model.bin`, then `model.bin` or `model.pt`).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return index_shards(&index, dir);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    // Any other *.safetensors file (e.g. consolidated names)?
    let listing: Vec<PathBuf> = std::fs::read_dir(dir).with_path(dir)?.flatten().map(|e| e.path()).collect();
    let mut found: Vec<PathBuf> =
        listing.iter().filter(|p| p.extension().map(|x| x == "safetensors").unwrap_or(false)).cloned().collect();
    found.sort();
    if !found.is_empty() {
        return Ok(found);
    }
    let index = dir.join("pytorch_model.bin.index.json");
    if index.exists() {
        return index_shards(&index, dir);
    }
    let single = dir.join("pytorch_model.bin");
    if single.exists() {
        return Ok(vec![single]);
    }
    let others: Vec<PathBuf> = ["model.bin", "model.pt"].iter().map(|f| dir.join(f)).filter(|p| p.exists()).collect();
    match others.len() {
        0 => {}
        1 => return Ok(others),
        _ => {
            return Err(Error::file(
                dir,
                "both model.bin and model.pt: which one holds the weights is ambiguous; keep one",
            ))
        }
    }
    let shards = listing.iter().any(|p| {
        let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        n.starts_with("pytorch_model-") && n.ends_with(".bin")
    });
    if shards {
        return Err(Error::file(
            dir.join("pytorch_model.bin.index.json"),
            "missing: the folder holds sharded pytorch_model-*.bin files but not their index",
        ));
    }
    Err(Error::file(
        dir,
        "no weights in this checkpoint folder (model.safetensors, model.safetensors.index.json, pytorch_model.bin \
         or pytorch_model.bin.index.json)",
    ))
}

impl Weights {
    /// Memory-map and validate the headers of a checkpoint folder's weight files.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_files(weight_files(dir)?)
    }

    /// Memory-map and index weight files: `*.safetensors` as safetensors, any other
    /// file as a `torch.save` checkpoint. A tensor in two files is an error.
    pub fn open_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files: Vec<(PathBuf, memmap2::Mmap)> = Vec::new();
        let mut index: HashMap<String, Entry> = HashMap::new();
        for (i, p) in paths.into_iter().enumerate() {
            let f = std::fs::File::open(&p).with_path(&p)?;
            // SAFETY: the file is only read; a concurrent writer could change it under us,
            // which is the documented risk of mmap. Checkpoints are not modified while read.
            let mmap = unsafe { memmap2::Mmap::map(&f) }.with_path(&p)?;
            let entries = if p.extension().is_some_and(|x| x == "safetensors") {
                safetensors_entries(&mmap, &p, i)?
            } else {
                pickle_entries(&mmap, &p, i)?
            };
            for (name, e) in entries {
                if let Some(old) = index.get(&name) {
                    let other = if old.file == i { &p } else { &files[old.file].0 };
                    return Err(Error::file(
                        &p,
                        format!("tensor `{name}` is also in {}: which one to use is ambiguous", other.display()),
                    ));
                }
                index.insert(name, e);
            }
            files.push((p, mmap));
        }
        Ok(Weights { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The file a tensor is stored in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|e| self.files[e.file].0.as_path())
    }

    /// The dtype a tensor is stored in.
    pub fn dtype_of(&self, name: &str) -> Option<safetensors::Dtype> {
        self.index.get(name).map(|e| e.dtype)
    }

    /// The first file (used in messages when a tensor is missing).
    pub fn main_file(&self) -> &Path {
        &self.files[0].0
    }

    /// Load one tensor, converted to `dtype` on `dev`.
    pub fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self.index.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: tensor `{name}` is missing", self.files[0].0.display()))
        })?;
        let (path, mmap) = &self.files[e.file];
        let data = &mmap[e.start..e.end];
        let data = match &e.strides {
            None => std::borrow::Cow::Borrowed(data),
            Some(st) => std::borrow::Cow::Owned(pickle::gather(data, &e.shape, st, e.dtype.bitsize() / 8)),
        };
        let t = convert(e.dtype, &e.shape, &data, dtype)
            .map_err(|err| candle_core::Error::Msg(format!("{}: tensor `{name}`: {err}", path.display())))?;
        t.to_device(dev)
    }
}

/// The tensors of a memory-mapped safetensors file.
fn safetensors_entries(mmap: &[u8], p: &Path, file: usize) -> Result<Vec<(String, Entry)>> {
    let st = SafeTensors::deserialize(mmap)
        .map_err(|e| Error::file(p, format!("not a valid safetensors file (corrupt or truncated?): {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        // safetensors checks the element count, which is 0 as soon as one
        // dimension is; the strides (products of the other dimensions) must
        // still fit in usize.
        let mut dims = view.shape().iter().filter(|&&d| d > 0);
        if dims.try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
            return Err(Error::file(
                p,
                format!("not a valid safetensors file: tensor `{name}` has an impossible shape {:?}", view.shape()),
            ));
        }
        let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        let end = start + view.data().len();
        out.push((name.to_string(), Entry { file, dtype: view.dtype(), shape: view.shape().to_vec(), start, end, strides: None }));
    }
    Ok(out)
}

/// The tensors of a memory-mapped `torch.save` file (nothing from it is run).
fn pickle_entries(mmap: &[u8], p: &Path, file: usize) -> Result<Vec<(String, Entry)>> {
    let tensors = pickle::index(mmap, p)?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            let es = t.elem_size();
            let first = t.storage.start + t.offset * es;
            let e = if t.numel() == 0 {
                Entry { file, dtype: t.dtype, shape: t.shape, start: t.storage.start, end: t.storage.start, strides: None }
            } else if t.is_contiguous() {
                let end = first + t.numel() * es;
                Entry { file, dtype: t.dtype, shape: t.shape, start: first, end, strides: None }
            } else {
                Entry { file, dtype: t.dtype, shape: t.shape, start: first, end: t.storage.end, strides: Some(t.strides) }
            };
            (name, e)
        })
        .collect())
}

/// A tensor of `to` from the little-endian bytes of a `dtype` tensor. The conversions
/// loading does (f16 / bf16 / f32 to f32, and a dtype to itself) run in one pass over
/// the bytes, in parallel chunks; the others go through candle's `to_dtype`.
fn convert(dtype: safetensors::Dtype, shape: &[usize], data: &[u8], to: DType) -> candle_core::Result<Tensor> {
    use safetensors::Dtype as S;
    let shape = shape.to_vec();
    let dev = &Device::Cpu;
    let t = match (dtype, to) {
        (S::F32, _) => Tensor::from_vec(par_map(data, f32::from_le_bytes), shape, dev)?,
        (S::F16, DType::F32) => Tensor::from_vec(f16_to_f32(data), shape, dev)?,
        (S::BF16, DType::F32) => {
            // half's conversion (a shift; a signalling NaN made quiet), as candle's to_dtype.
            let v = par_map(data, |b: [u8; 2]| half::bf16::from_le_bytes(b).to_f32());
            Tensor::from_vec(v, shape, dev)?
        }
        (S::F16, _) => Tensor::from_vec(par_map(data, half::f16::from_le_bytes), shape, dev)?,
        (S::BF16, _) => Tensor::from_vec(par_map(data, half::bf16::from_le_bytes), shape, dev)?,
        (other, _) => candle_core::bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    };
    t.to_dtype(to)
}

/// Elements per parallel chunk of a conversion.
const CHUNK: usize = 1 << 16;

/// `f` over each `N`-byte element of `data`, in parallel chunks.
fn par_map<const N: usize, T: Copy + Default + Send>(data: &[u8], f: impl Fn([u8; N]) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::default(); data.len() / N];
    out.par_chunks_mut(CHUNK).zip(data.par_chunks(CHUNK * N)).for_each(|(o, d)| {
        for (x, c) in o.iter_mut().zip(d.chunks_exact(N)) {
            *x = f(c.try_into().unwrap());
        }
    });
    out
}

/// f16 bytes to f32 with the CPU's conversion instructions (half's slice conversion:
/// F16C on x86), in parallel chunks through a small aligned buffer.
fn f16_to_f32(data: &[u8]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut out = vec![0f32; data.len() / 2];
    out.par_chunks_mut(CHUNK).zip(data.par_chunks(CHUNK * 2)).for_each(|(o, d)| {
        let mut buf = [half::f16::ZERO; 1024];
        for (o, d) in o.chunks_mut(1024).zip(d.chunks(2048)) {
            let b = &mut buf[..o.len()];
            for (x, c) in b.iter_mut().zip(d.chunks_exact(2)) {
                *x = half::f16::from_le_bytes([c[0], c[1]]);
            }
            b.convert_to_f32_slice(o);
        }
    });
    out
}

/// Lets candle-nn's `VarBuilder` read from our validated weights: every tensor is
/// checked against the shape the model code (from config.json) asks for.
impl SimpleBackend for Weights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.index.get(name) {
            None => candle_core::bail!(
                "{}: tensor `{name}` is missing (is config.json for another architecture?)",
                self.files[0].0.display()
            ),
            Some(e) if e.shape.as_slice() != s.dims() => candle_core::bail!(
                "{}: tensor `{name}` has shape {:?} but config.json implies {:?}",
                self.files[e.file].0.display(),
                e.shape,
                s.dims()
            ),
            Some(_) => self.load(name, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked parallel conversions equal element-by-element ones, over several chunks
    /// and a partial last one, for every bit pattern of f16 / bf16 (40503 is odd: i * 40503
    /// mod 2^16 visits them all).
    #[test]
    fn chunked_conversions_equal_scalar_ones() {
        let n = 3 * CHUNK + 12345;
        let bits: Vec<u16> = (0..n).map(|i| (i as u32).wrapping_mul(40503) as u16).collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        for (dt, scalar) in [
            (safetensors::Dtype::F16, (|b: u16| half::f16::from_bits(b).to_f32()) as fn(u16) -> f32),
            (safetensors::Dtype::BF16, |b: u16| half::bf16::from_bits(b).to_f32()),
        ] {
            let t = convert(dt, &[n], &bytes, DType::F32).unwrap();
            let got: Vec<u32> = t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
            let want: Vec<u32> = bits.iter().map(|&b| scalar(b).to_bits()).collect();
            assert!(got == want, "{dt:?} to f32");
            let t = convert(dt, &[n], &bytes, if dt == safetensors::Dtype::F16 { DType::F16 } else { DType::BF16 }).unwrap();
            let back: Vec<u8> = match dt {
                safetensors::Dtype::F16 => t.to_vec1::<half::f16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                _ => t.to_vec1::<half::bf16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            assert!(back == bytes, "{dt:?} to itself");
        }
        let f: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let fb: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(convert(safetensors::Dtype::F32, &[n], &fb, DType::F32).unwrap().to_vec1::<f32>().unwrap(), f);
        let e = convert(safetensors::Dtype::BOOL, &[1], &[1], DType::F32).unwrap_err().to_string();
        assert!(e.contains("unsupported dtype BOOL"), "{e}");
    }
}
