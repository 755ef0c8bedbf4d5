//! Checkpoint weights: `model.safetensors` or sharded (`model.safetensors.index.json`),
//! in f32, f16 or bf16. Files are memory-mapped and their headers validated; every
//! tensor is checked against the shape the config implies, and errors name the file.
//! PyTorch pickle checkpoints (`*.bin`, `*.pt`) are refused: nothing from a
//! checkpoint is ever executed.

use crate::error::{Error, Result, WithPath};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The memory-mapped safetensors files of one checkpoint.
pub struct Weights {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// tensor name -> its place in a file
    index: HashMap<String, Entry>,
}

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// byte range of the data inside the mapped file
    start: usize,
    end: usize,
}

/// Find the safetensors files of a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let bytes = std::fs::read(&index).with_path(&index)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).with_path(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::file(&index, "no `weight_map` object in the index"))?;
        let mut files: Vec<String> = Vec::new();
        for (name, f) in map {
            let f = f
                .as_str()
                .ok_or_else(|| Error::file(&index, format!("weight_map entry `{name}` is not a file name")))?;
            if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(Error::file(&index, format!("weight_map entry `{name}` points outside the folder: `{f}`")));
            }
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        if files.is_empty() {
            return Err(Error::file(&index, "the index lists no weight files"));
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
        return Ok(paths);
    }
    if single.exists() {
        return Ok(vec![single]);
    }
    // Any other *.safetensors file (e.g. consolidated names)?
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_path(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().map(|x| x == "safetensors").unwrap_or(false))
        .collect();
    found.sort();
    if !found.is_empty() {
        return Ok(found);
    }
    for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt"] {
        let p = dir.join(pickle);
        if p.exists() {
            return Err(Error::file(
                &p,
                "PyTorch pickle checkpoints are refused (loading them would execute code from the file); \
                 convert to safetensors first, e.g. `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`",
            ));
        }
    }
    Err(Error::file(dir, "no model.safetensors (or model.safetensors.index.json) in this checkpoint folder"))
}

impl Weights {
    /// Memory-map and validate the headers of a checkpoint's safetensors files.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.into_iter().enumerate() {
            let f = std::fs::File::open(&p).with_path(&p)?;
            // SAFETY: the file is only read; a concurrent writer could change it under us,
            // which is the documented risk of mmap. Checkpoints are not modified while read.
            let mmap = unsafe { memmap2::Mmap::map(&f) }.with_path(&p)?;
            {
                let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                    Error::file(&p, format!("not a valid safetensors file (corrupt or truncated?): {e}"))
                })?;
                for (name, view) in st.tensors() {
                    // safetensors checks the element count, which is 0 as soon as one
                    // dimension is; the strides (products of the other dimensions) must
                    // still fit in usize.
                    let mut dims = view.shape().iter().filter(|&&d| d > 0);
                    if dims.try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
                        return Err(Error::file(
                            &p,
                            format!("not a valid safetensors file: tensor `{name}` has an impossible shape {:?}", view.shape()),
                        ));
                    }
                    let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                    let end = start + view.data().len();
                    let e = Entry { file: i, dtype: view.dtype(), shape: view.shape().to_vec(), start, end };
                    index.insert(name.to_string(), e);
                }
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
        let t = convert(e.dtype, &e.shape, &mmap[e.start..e.end])
            .map_err(|err| candle_core::Error::Msg(format!("{}: tensor `{name}`: {err}", path.display())))?;
        t.to_dtype(dtype)?.to_device(dev)
    }
}

fn convert(dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> candle_core::Result<Tensor> {
    use safetensors::Dtype as S;
    let shape = shape.to_vec();
    let t = match dtype {
        S::F32 => Tensor::from_vec(bytemuck_f32(data), shape, &Device::Cpu)?,
        S::F16 => {
            let v: Vec<half::f16> = data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        S::BF16 => {
            let v: Vec<half::bf16> = data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        other => candle_core::bail!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
    };
    Ok(t)
}

fn bytemuck_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
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
