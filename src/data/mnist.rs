//! MNIST and Fashion-MNIST.
//!
//! Where the data is looked for, in order:
//! 1. the folder given as `dir` in the config or `--data-dir`: the four IDX
//!    files, plain or `.gz`;
//! 2. `$SPARSITY_LAB_DATA/<mnist|fashion-mnist>/raw/`, the same files;
//! 3. the hf-hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!    `~/.cache/huggingface/hub`), read by candle-datasets' own loader;
//! 4. a download from the Hugging Face Hub by the same loader, unless
//!    `HF_HUB_OFFLINE` is set.
//!
//! When all fail, one error names every place searched and how to provide
//! the data.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::info;

use super::dataset::{
    Dataset, ImageConfig, Split, Task, labels_to_tensor, limit_examples, pixels_to_tensor,
    split_off_last,
};
use crate::error::usage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Mnist,
    FashionMnist,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Mnist => "mnist",
            Which::FashionMnist => "fashion-mnist",
        }
    }
    /// The hf-hub dataset id and the parquet files candle-datasets asks for.
    fn hub(self) -> (&'static str, [&'static str; 2]) {
        match self {
            Which::Mnist => (
                "ylecun/mnist",
                ["mnist/train/0000.parquet", "mnist/test/0000.parquet"],
            ),
            Which::FashionMnist => (
                "zalando-datasets/fashion_mnist",
                [
                    "fashion_mnist/train/0000.parquet",
                    "fashion_mnist/test/0000.parquet",
                ],
            ),
        }
    }
}

/// The four IDX file stems.
const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

pub fn load(which: Which, cfg: &ImageConfig) -> Result<Dataset> {
    let mut searched = vec![];
    let (train, test, source) = 'found: {
        if let Some(dir) = &cfg.dir {
            // An explicit folder must hold the data: no silent fallback.
            let (train, test) = load_idx_dir(dir).with_context(|| {
                format!(
                    "{}: reading IDX files from --data-dir/dir `{}`",
                    which.name(),
                    dir.display()
                )
            })?;
            break 'found (train, test, dir.display().to_string());
        }
        match std::env::var_os("SPARSITY_LAB_DATA") {
            Some(root) => {
                let dir = PathBuf::from(root).join(which.name()).join("raw");
                if idx_files(&dir).is_ok() {
                    let (train, test) = load_idx_dir(&dir)?;
                    break 'found (train, test, dir.display().to_string());
                }
                searched.push(format!(
                    "{} (from SPARSITY_LAB_DATA) has no IDX files",
                    dir.display()
                ));
            }
            None => searched.push("SPARSITY_LAB_DATA is not set".into()),
        }
        let (id, files) = which.hub();
        let cache = hf_hub::resolve_cache_dir();
        let cached = hub_cached(&cache, id, &files);
        if !cached {
            searched.push(format!("hf-hub cache {} has no {id}", cache.display()));
            if offline() {
                searched.push("no download because HF_HUB_OFFLINE is set".into());
                return Err(not_found(which, &searched));
            }
            info!(
                "{}: downloading {id} from the Hugging Face Hub",
                which.name()
            );
        }
        let loaded = match which {
            Which::Mnist => candle_datasets::vision::mnist::load(),
            Which::FashionMnist => candle_datasets::vision::fashion_mnist::load(),
        };
        match loaded {
            Ok(ds) => {
                let train = Split::Examples {
                    x: rescaled(&ds.train_images)?,
                    y: ds.train_labels.to_dtype(candle_core::DType::U32)?,
                };
                let test = Split::Examples {
                    x: rescaled(&ds.test_images)?,
                    y: ds.test_labels.to_dtype(candle_core::DType::U32)?,
                };
                break 'found (train, test, format!("hf-hub {id} ({})", cache.display()));
            }
            Err(e) => {
                let what = if cached {
                    "reading the cached"
                } else {
                    "downloading"
                };
                searched.push(format!("{what} {id} failed: {e}"));
                return Err(not_found(which, &searched));
            }
        }
    };
    let (train, test, held_out) = match cfg.validation {
        Some(n) => {
            let (train, val) = split_off_last(train, n)?;
            (
                train,
                val,
                format!("validation: the last {n} training examples"),
            )
        }
        None => (train, test, "test split".to_string()),
    };
    let train = limit_examples(train, cfg.train_limit)?;
    let description = format!(
        "{}: {} training examples{}, held out: {} ({} examples)",
        which.name(),
        train.len(),
        cfg.train_limit
            .map(|_| " (the first of the training split)")
            .unwrap_or(""),
        held_out,
        test.len()
    );
    info!(
        "{}: {} train, {} test examples from {source}",
        which.name(),
        train.len(),
        test.len()
    );
    Ok(Dataset {
        name: which.name().into(),
        task: Task::Classify {
            inputs: 784,
            classes: 10,
        },
        train,
        test,
        description,
        location: Some(source),
    })
}

/// candle-datasets scales pixels as `p * (1/255)`, which differs in the
/// last bit from the IDX path's `p / 255` for some values: back to the bytes
/// (exact: every value is within a fraction of an ulp of k/255) and scaled
/// as the IDX path does, so the same images give the same tensors, the same
/// data digest and the same training, wherever they were read from.
fn rescaled(images: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    let (n, d) = images.dims2()?;
    let bytes: Vec<u8> = images
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    pixels_to_tensor(bytes, n, d)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

fn not_found(which: Which, searched: &[String]) -> anyhow::Error {
    usage(format!(
        "{} not found: {}. Provide it with --data-dir DIR (a folder of the four IDX files, plain or .gz), \
         SPARSITY_LAB_DATA=ROOT (with ROOT/{}/raw/), or HF_HUB_CACHE / HF_HOME pointing at an hf-hub cache \
         that holds {}; online, it is downloaded",
        which.name(),
        searched.join("; "),
        which.name(),
        which.hub().0
    ))
}

/// True when an hf-hub cache holds both parquet files of a dataset (any snapshot).
fn hub_cached(cache: &Path, id: &str, files: &[&str]) -> bool {
    let snapshots = cache
        .join(format!("datasets--{}", id.replace('/', "--")))
        .join("snapshots");
    let Ok(entries) = std::fs::read_dir(&snapshots) else {
        return false;
    };
    entries
        .flatten()
        .any(|snap| files.iter().all(|f| snap.path().join(f).is_file()))
}

/// The paths of the four IDX files in `dir`, each plain or `.gz`.
fn idx_files(dir: &Path) -> Result<[PathBuf; 4]> {
    let mut missing = vec![];
    let paths = IDX_FILES.map(|stem| {
        let plain = dir.join(stem);
        let gz = dir.join(format!("{stem}.gz"));
        if plain.is_file() {
            plain
        } else if gz.is_file() {
            gz
        } else {
            missing.push(stem);
            plain
        }
    });
    if !missing.is_empty() {
        return Err(usage(format!(
            "{} lacks {} (plain or .gz)",
            dir.display(),
            missing.join(", ")
        )));
    }
    Ok(paths)
}

/// Reads a folder of IDX files into (train, test).
pub fn load_idx_dir(dir: &Path) -> Result<(Split, Split)> {
    let [tri, trl, tei, tel] = idx_files(dir)?;
    let split = |images: &Path, labels_path: &Path| -> Result<Split> {
        let (n, d, pixels) = read_idx_images(images)?;
        let labels = read_idx_labels(labels_path)?;
        if labels.len() != n {
            return Err(usage(format!(
                "{} has {n} images but {} has {} labels",
                images.display(),
                labels_path.display(),
                labels.len()
            )));
        }
        Ok(Split::Examples {
            x: pixels_to_tensor(pixels, n, d)?,
            y: labels_to_tensor(labels)?,
        })
    };
    Ok((split(&tri, &trl)?, split(&tei, &tel)?))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An IDX file of unsigned bytes whose magic number is `magic` and which has
/// `ndims` dimensions: the dimensions and the payload. `what` names the kind
/// of file in errors.
fn read_idx(path: &Path, what: &str, magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = read_maybe_gz(path)?;
    let bad = |why: String| {
        usage(format!(
            "{} is not an IDX {what} file: {why}",
            path.display()
        ))
    };
    let header = 4 + 4 * ndims;
    if b.len() < header {
        return Err(bad(format!("only {} bytes", b.len())));
    }
    if be_u32(&b, 0) != magic {
        return Err(bad(format!(
            "magic number {} (expected {magic})",
            be_u32(&b, 0)
        )));
    }
    let dims: Vec<usize> = (0..ndims).map(|k| be_u32(&b, 4 + 4 * k) as usize).collect();
    let need = header + dims.iter().product::<usize>();
    if b.len() != need {
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(bad(format!(
            "a {} {what} payload needs {need} bytes, found {}",
            shape.join("x"),
            b.len()
        )));
    }
    Ok((dims, b[header..].to_vec()))
}

/// An IDX3 image file: (count, rows*cols, pixels).
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let (d, pixels) = read_idx(path, "image", 2051, 3)?;
    Ok((d[0], d[1] * d[2], pixels))
}

/// An IDX1 label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read_idx(path, "label", 2049, 1)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_idx(dir: &Path, gz: bool, n: usize) {
        let mut images = vec![];
        images.extend(2051u32.to_be_bytes());
        images.extend((n as u32).to_be_bytes());
        images.extend(2u32.to_be_bytes());
        images.extend(3u32.to_be_bytes());
        images.extend((0..n * 6).map(|i| (i * 17 % 256) as u8));
        let mut labels = vec![];
        labels.extend(2049u32.to_be_bytes());
        labels.extend((n as u32).to_be_bytes());
        labels.extend((0..n).map(|i| (i % 10) as u8));
        for (stem, bytes) in [
            ("train-images-idx3-ubyte", &images),
            ("train-labels-idx1-ubyte", &labels),
            ("t10k-images-idx3-ubyte", &images),
            ("t10k-labels-idx1-ubyte", &labels),
        ] {
            if gz {
                let f = std::fs::File::create(dir.join(format!("{stem}.gz"))).unwrap();
                let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
                e.write_all(bytes).unwrap();
                e.finish().unwrap();
            } else {
                std::fs::write(dir.join(stem), bytes).unwrap();
            }
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sparsity-lab-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_plain_and_gzipped_idx_files_alike() {
        let (a, b) = (tmp("plain"), tmp("gz"));
        write_idx(&a, false, 5);
        write_idx(&b, true, 5);
        let (tra, _) = load_idx_dir(&a).unwrap();
        let (trb, teb) = load_idx_dir(&b).unwrap();
        let (Split::Examples { x: xa, y: ya }, Split::Examples { x: xb, y: yb }) = (tra, trb)
        else {
            panic!()
        };
        assert_eq!(xa.dims(), [5, 6]);
        assert_eq!(
            xa.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            xb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(ya.to_vec1::<u32>().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(yb.to_vec1::<u32>().unwrap(), [0, 1, 2, 3, 4]);
        // pixel i*17 % 256, scaled to [0, 1]
        assert_eq!(
            xa.get(0).unwrap().to_vec1::<f32>().unwrap()[1],
            17.0 / 255.0
        );
        assert_eq!(teb.len(), 5);
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn missing_and_corrupt_files_are_usage_errors_naming_the_file() {
        let d = tmp("bad");
        let err = load_idx_dir(&d).unwrap_err();
        assert!(crate::error::is_usage(&err));
        assert!(
            format!("{err}").contains("train-images-idx3-ubyte"),
            "{err}"
        );
        write_idx(&d, false, 3);
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            [0u8, 0, 8, 2, 0, 0, 0, 1, 1],
        )
        .unwrap();
        let err = load_idx_dir(&d).unwrap_err();
        assert!(
            format!("{err}").contains("t10k-labels-idx1-ubyte")
                && format!("{err}").contains("2049"),
            "{err}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn explicit_dir_without_data_names_it() {
        let cfg = ImageConfig {
            dir: Some(PathBuf::from("/nonexistent/mnist")),
            ..Default::default()
        };
        let err = load(Which::Mnist, &cfg).unwrap_err();
        let msg = format!("{err:#}");
        assert!(crate::error::is_usage(&err), "{msg}");
        assert!(msg.contains("/nonexistent/mnist"), "{msg}");
    }
}
