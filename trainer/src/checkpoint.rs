//! Checkpoints: a directory that is itself a loadable Hugging Face model
//! (`config.json`, `tokenizer.json`, `model.safetensors`) plus the
//! optimizer's state (`optimizer.safetensors`) and the trainer's
//! (`trainer_state.json`: step, policy version, data cursor, every RNG
//! state), written atomically: into `<dir>.tmp`, each file fsynced, then one
//! rename and an fsync of the parent. The digests go into the
//! `checkpoint_saved` event, and loading checks them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fathom_core::Digest;
use fathom_model::VarMap;
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;

/// The trainer's own state at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Training steps completed.
    pub step: u64,
    /// Optimizer updates the weights have seen.
    pub policy_version: u64,
    /// Position in the data order.
    pub data_cursor: u64,
    /// Every RNG state needed to continue bit-for-bit.
    pub rng_state: Vec<u64>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// BLAKE3 of `model.safetensors`.
    pub weights_digest: Digest,
    /// BLAKE3 of `optimizer.safetensors`.
    pub optimizer_digest: Digest,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what the log says it should be.
    #[error("checkpoint {} is damaged or was replaced: {what}", dir.display())]
    Mismatch {
        /// The checkpoint.
        dir: PathBuf,
        /// What differs.
        what: String,
    },
    /// candle failed reading or writing tensors.
    #[error("checkpoint tensors: {0}")]
    Candle(#[from] candle_core::Error),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn digest_of(path: &Path) -> Result<(Digest, u64), CheckpointError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    Ok((Digest(*blake3::hash(&bytes).as_bytes()), bytes.len() as u64))
}

/// BLAKE3 of a model directory's `model.safetensors`, as `CheckpointSaved`
/// records it; `None` when the file cannot be read.
pub fn weights_digest(model_dir: &Path) -> Option<Digest> {
    digest_of(&model_dir.join("model.safetensors")).ok().map(|(d, _)| d)
}

fn fsync(path: &Path) -> Result<(), CheckpointError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io("fsync", path))
}

/// Writes a checkpoint of `vars`, `optimizer` and `state` to `dir`, with
/// the model directory's `config.json` and `tokenizer.json` copied from
/// `model_dir`. An existing `dir` is replaced only once the new one is
/// complete.
pub fn save(
    dir: &Path,
    model_dir: &Path,
    vars: &VarMap,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<Saved, CheckpointError> {
    let bytes = write_atomically(dir, model_dir, vars, |tmp| {
        candle_core::safetensors::save(&optimizer.state()?, tmp.join("optimizer.safetensors"))?;
        let state_path = tmp.join("trainer_state.json");
        let mut f = File::create(&state_path).map_err(io("create", &state_path))?;
        f.write_all(
            serde_json::to_string_pretty(state)
                .expect("state serialises")
                .as_bytes(),
        )
        .map_err(io("write", &state_path))?;
        Ok(())
    })?;
    Ok(Saved {
        dir: dir.to_path_buf(),
        weights_digest: digest_of(&dir.join("model.safetensors"))?.0,
        optimizer_digest: digest_of(&dir.join("optimizer.safetensors"))?.0,
        bytes,
    })
}

/// Writes `vars` as a Hugging Face model directory `dir` (the files a
/// checkpoint holds, without the optimizer's and trainer's state), with
/// `config.json` and the tokenizer's files copied from `model_dir`,
/// atomically. Returns the weights' digest and the bytes written.
pub fn save_model(dir: &Path, model_dir: &Path, vars: &VarMap) -> Result<(Digest, u64), CheckpointError> {
    let bytes = write_atomically(dir, model_dir, vars, |_| Ok(()))?;
    Ok((digest_of(&dir.join("model.safetensors"))?.0, bytes))
}

/// The model files into `<dir>.tmp`, then `more` there, each file fsynced,
/// one rename onto `dir` and an fsync of its parent; the bytes written.
fn write_atomically(
    dir: &Path,
    model_dir: &Path,
    vars: &VarMap,
    more: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<u64, CheckpointError> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io("clear", &tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let from = model_dir.join(name);
        if from.exists() {
            fs::copy(&from, tmp.join(name)).map_err(io("copy", &from))?;
        }
    }
    vars.save(tmp.join("model.safetensors"))?;
    more(&tmp)?;
    let mut bytes = 0;
    for entry in fs::read_dir(&tmp).map_err(io("list", &tmp))?.flatten() {
        fsync(&entry.path())?;
        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    fsync(&tmp)?;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io("replace", dir))?;
    }
    fs::rename(&tmp, dir).map_err(io("rename into place", dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync(parent)?,
        _ => fsync(Path::new("."))?,
    }
    Ok(bytes)
}

/// Checks a checkpoint's files against the digests the log recorded, and
/// reads its optimizer and trainer state.
pub fn load_state(
    dir: &Path,
    weights_digest: &Digest,
    optimizer_digest: &Digest,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, TrainerState), CheckpointError> {
    for (file, want) in [
        ("model.safetensors", weights_digest),
        ("optimizer.safetensors", optimizer_digest),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            return Err(CheckpointError::Mismatch {
                dir: dir.to_path_buf(),
                what: format!("{file} is missing"),
            });
        }
        let (got, _) = digest_of(&path)?;
        if &got != want {
            return Err(CheckpointError::Mismatch {
                dir: dir.to_path_buf(),
                what: format!(
                    "{file} has digest {} but the log recorded {}",
                    got.short(),
                    want.short()
                ),
            });
        }
    }
    let optimizer = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
    let path = dir.join("trainer_state.json");
    let text = fs::read_to_string(&path).map_err(io("read", &path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| CheckpointError::Mismatch {
        dir: dir.to_path_buf(),
        what: format!("trainer_state.json does not parse: {e}"),
    })?;
    Ok((optimizer, state))
}
