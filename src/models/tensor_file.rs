//! Reading and writing safetensors files one tensor at a time.
//!
//! `candle_core::safetensors::load` reads the whole file into memory and then builds every
//! tensor from it, so loading a checkpoint peaks at twice its size (a 7B model in bf16: 28 GB
//! for 14 GB of weights). Here the header is parsed on its own and each tensor is read straight
//! from its offset, so the peak is the tensors plus one tensor's bytes. Writing is the mirror
//! image: the header comes from names, dtypes and shapes alone, and each tensor is produced
//! (for a LoRA checkpoint: merged) only when its turn comes, so a merged 7B checkpoint never
//! sits in memory beside the model.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The header's description of one tensor.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// An open safetensors file whose tensors are read on demand.
pub struct TensorFile {
    path: std::path::PathBuf,
    f: std::fs::File,
    size: u64,
    data_start: u64,
    entries: HashMap<String, (DType, Entry)>,
}

impl TensorFile {
    fn fail(&self, msg: String) -> Error {
        Error::Model {
            file: self.path.display().to_string(),
            msg,
        }
    }

    /// Opens `path` and reads its header (nothing else).
    pub fn open(path: &Path) -> Result<TensorFile> {
        let fail = |msg: String| Error::Model {
            file: path.display().to_string(),
            msg,
        };
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            // A checkpoint (or its index) naming a file that is not there is bad input.
            std::io::ErrorKind::NotFound => fail("no such file".into()),
            _ => io(e),
        })?;
        let size = f.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        f.read_exact(&mut n)
            .map_err(|_| fail("not a safetensors file (shorter than its header length)".into()))?;
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || 8 + n > size {
            return Err(fail(format!(
                "not a safetensors file (header of {n} bytes in a {size}-byte file)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| fail(format!("unreadable safetensors header: {e}")))?;
        let data_start = 8 + n;
        let mut entries = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let e: Entry = serde_json::from_value(v)
                .map_err(|e| fail(format!("header entry of tensor `{name}`: {e}")))?;
            let dtype = dtype_of(&e.dtype).ok_or_else(|| {
                fail(format!("tensor `{name}` has unsupported dtype {}", e.dtype))
            })?;
            let [a, b] = e.data_offsets;
            let want = e.shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
            if b < a || b - a != want || data_start + b > size {
                return Err(fail(format!(
                    "tensor `{name}`: data offsets {a}..{b} do not hold shape {:?} of {} in a \
                     {size}-byte file (truncated or corrupt)",
                    e.shape, e.dtype
                )));
            }
            entries.insert(name, (dtype, e));
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            f,
            size,
            data_start,
            entries,
        })
    }

    /// The names of its tensors, in file order.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<(&String, u64)> = (self.entries.iter())
            .map(|(k, (_, e))| (k, e.data_offsets[0]))
            .collect();
        v.sort_by_key(|(_, a)| *a);
        v.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// Names and shapes of its tensors, in file order.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        (self.names().into_iter())
            .map(|k| {
                let shape = self.entries[&k].1.shape.clone();
                (k, shape)
            })
            .collect()
    }

    /// Reads the tensor `name` onto `device`.
    pub fn load(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let Some((dtype, e)) = self.entries.get(name) else {
            return Err(self.fail(format!("missing tensor `{name}`")));
        };
        let (dtype, shape, [a, b]) = (*dtype, e.shape.clone(), e.data_offsets);
        let io = |e: std::io::Error| Error::Io {
            path: self.path.display().to_string(),
            source: e,
        };
        debug_assert!(self.data_start + b <= self.size);
        self.f
            .seek(SeekFrom::Start(self.data_start + a))
            .map_err(io)?;
        if dtype == DType::F32 && device.is_cpu() && cfg!(target_endian = "little") {
            // Straight into the tensor's own values: no byte buffer to copy from.
            let mut v = crate::alloc::zeros(((b - a) / 4) as usize);
            // SAFETY: the bytes of an initialised f32 slice; every bit pattern is an f32.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 4) };
            self.f.read_exact(bytes).map_err(io)?;
            return Ok(Tensor::from_vec(v, shape, device)?);
        }
        let mut buf = vec![0u8; (b - a) as usize];
        self.f.read_exact(&mut buf).map_err(io)?;
        Ok(Tensor::from_raw_buffer(&buf, dtype, &shape, device)?)
    }
}

/// Every tensor of the safetensors file at `path`, on `device`, read one at a time; errors
/// name the file and the tensor.
pub fn read(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut f = TensorFile::open(path)?;
    let mut out = HashMap::new();
    for name in f.names() {
        let t = f.load(&name, device)?;
        out.insert(name, t);
    }
    Ok(out)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        _ => "UNSUPPORTED",
    }
}

/// One tensor to write: its name, dtype and shape up front, its values on demand.
pub struct Pending<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub make: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

impl Pending<'_> {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size_in_bytes() as u64
    }
}

/// Writes `tensors` (in the order given) as the safetensors file `path`, with `metadata`,
/// producing one tensor at a time; a produced tensor must have its announced dtype and shape.
pub fn write(
    path: &Path,
    tensors: &[Pending<'_>],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype_name(t.dtype),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).expect("a JSON map");
    // Pad the header to a multiple of 8 bytes, as the safetensors writer does.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut f =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).map_err(io)?);
    f.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&text).map_err(io)?;
    for t in tensors {
        let v = (t.make)()?;
        if v.dtype() != t.dtype || v.dims() != t.shape.as_slice() {
            return Err(Error::Model {
                file: path.display().to_string(),
                msg: format!(
                    "tensor `{}` came out {:?} {:?}, announced {:?} {:?}",
                    t.name,
                    v.dtype(),
                    v.dims(),
                    t.dtype,
                    t.shape
                ),
            });
        }
        v.write_bytes(&mut f)?;
    }
    f.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_safetensors_writes() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let a = Tensor::arange(0f32, 12., &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let c = Tensor::new(&[7u32, 8, 9], &dev).unwrap();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file([("a", &a), ("b", &b), ("c", &c)], Some(meta), &p).unwrap();
        let got = read(&p, &dev).unwrap();
        let want = candle_core::safetensors::load(&p, &dev).unwrap();
        assert_eq!(got.len(), 3);
        for (k, w) in want {
            let g = &got[&k];
            assert_eq!(g.dtype(), w.dtype(), "{k}");
            assert_eq!(g.dims(), w.dims(), "{k}");
            let (g, w) = (
                g.to_dtype(DType::F64).unwrap(),
                w.to_dtype(DType::F64).unwrap(),
            );
            assert_eq!(
                g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                "{k}"
            );
        }
    }

    #[test]
    fn writes_what_safetensors_reads() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 6., &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 3.0], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let pending = |name: &str, t: &Tensor| Pending {
            name: name.into(),
            dtype: t.dtype(),
            shape: t.dims().to_vec(),
            make: Box::new({
                let t = t.clone();
                move || Ok((&t * 2.0)?)
            }),
        };
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write(&p, &[pending("z", &a), pending("b", &b)], &meta).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 2);
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap()["format"], "pt");
        let got = candle_core::safetensors::load(&p, &dev).unwrap();
        assert_eq!(
            got["z"].to_vec2::<f32>().unwrap(),
            vec![vec![0., 2., 4.], vec![6., 8., 10.]]
        );
        assert_eq!(got["b"].dtype(), DType::BF16);
        assert_eq!(
            got["b"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![3.0, -4.0, 6.0]
        );
        // A tensor that comes out other than announced is refused.
        let bad = Pending {
            shape: vec![3, 2],
            ..pending("z", &a)
        };
        assert!(write(&p, &[bad], &meta).is_err());
    }

    #[test]
    fn a_truncated_file_names_the_tensor() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let a = Tensor::zeros((4, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((4, 4), DType::F32, &dev).unwrap();
        safetensors::serialize_to_file([("a", &a), ("b", &b)], None, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = read(&p, &dev).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("tensor `b`"),
            "{e}"
        );
        std::fs::write(&p, b"xx").unwrap();
        let e = read(&p, &dev).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}
