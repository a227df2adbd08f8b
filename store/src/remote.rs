//! Snapshots shipped to object storage (S3-compatible, GCS, Azure, or a
//! local directory), and read back from there.
//!
//! A [`Location`] is a URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
//! `file:///abs/dir` or a plain path). The remote copy has the local
//! layout: `<url>/manifest.json`, `<url>/<table>/part-….parquet`, and
//! `<url>/checkpoints/<run>/…` when checkpoints are shipped too.
//!
//! [`Location::ship`] brings the remote copy up to the local manifest:
//! every committed file the remote copy lacks is uploaded (a single PUT,
//! or a multipart upload for files over [`MULTIPART_BYTES`], which stays
//! invisible until it completes and is aborted on error), then the
//! manifest is written in one PUT, then objects the manifest no longer
//! names (files compacted away, uploads of an interrupted ship) are
//! deleted. A reader that goes by the remote manifest therefore only ever
//! meets complete objects; a killed ship leaves the previous manifest and
//! at most some complete, unnamed objects, which the next ship removes.
//! Transient errors are retried by the object store client (exponential
//! backoff); credentials and endpoint come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, and the `GOOGLE_*` / `AZURE_*`
//! equivalents).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};

use crate::snapshot::{MANIFEST_FORMAT, Manifest, Snapshots};
use crate::{Error, Result};

/// Files larger than this are uploaded in parts of this size.
pub const MULTIPART_BYTES: usize = 8 << 20;

/// Where snapshots are shipped to and read from.
#[derive(Clone)]
pub struct Location {
    url: url::Url,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    part_bytes: usize,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({})", self.url)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

fn remote_err(action: &str, url: impl std::fmt::Display) -> impl FnOnce(object_store::Error) -> Error {
    let what = format!("{action} {url}");
    move |e| Error::Remote(format!("could not {what}: {e}"))
}

impl Location {
    /// Parses a location: `s3://bucket/prefix` (also `s3a://`), `gs://bucket/prefix`,
    /// `az://container/prefix` (also `abfs://`, `abfss://`, `azure://`),
    /// `file:///absolute/dir`, or a plain directory path.
    pub fn parse(text: &str) -> Result<Location> {
        let text = text.trim();
        let bad = |why: String| {
            Error::Remote(format!(
                "snapshot location '{text}' {why}; write s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///dir or a directory path"
            ))
        };
        if text.is_empty() {
            return Err(bad("is empty".into()));
        }
        let url = if text.contains("://") {
            url::Url::parse(text).map_err(|e| bad(format!("is not a URL ({e})")))?
        } else {
            let path = std::path::absolute(text).map_err(|e| bad(format!("is not a usable path ({e})")))?;
            url::Url::from_directory_path(&path).map_err(|()| bad("is not an absolute path".into()))?
        };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| bad("is not a local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    action: "create",
                    path: dir.clone(),
                    source,
                })?;
                let fs = object_store::local::LocalFileSystem::new();
                let prefix = ObjectPath::from_filesystem_path(&dir).map_err(|e| bad(e.to_string()))?;
                (Arc::new(fs), prefix)
            }
            "s3" | "s3a" => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(format!("cannot be opened ({e})")))?;
                (Arc::new(s3), ObjectPath::from(url.path().trim_matches('/')))
            }
            "gs" => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(format!("cannot be opened ({e})")))?;
                (Arc::new(gcs), ObjectPath::from(url.path().trim_matches('/')))
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(format!("cannot be opened ({e})")))?;
                (Arc::new(az), ObjectPath::from(url.path().trim_matches('/')))
            }
            other => return Err(bad(format!("has the unsupported scheme '{other}'"))),
        };
        let mut url = url;
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        // Tuning: FATHOM_SNAPSHOTS_PART_BYTES sets the multipart part size
        // (S3 needs at least 5 MiB for every part but the last).
        let part_bytes = match std::env::var("FATHOM_SNAPSHOTS_PART_BYTES") {
            Ok(v) => v.trim().parse::<usize>().map_err(|_| {
                Error::Remote(format!(
                    "FATHOM_SNAPSHOTS_PART_BYTES='{v}' is not a number of bytes; unset it or give e.g. 8388608"
                ))
            })?,
            Err(_) => MULTIPART_BYTES,
        };
        Ok(Location {
            url,
            store,
            prefix,
            part_bytes: part_bytes.max(1),
        })
    }

    /// The location's URL (ends with `/`).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The URL of the object store itself (`s3://bucket/`), which a query
    /// engine registers the store under.
    pub fn store_url(&self) -> url::Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u
    }

    /// The object store.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The full URL of `rel` (`episodes/part-….parquet`) under this location.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}{}", self.url, rel)
    }

    fn path_of(&self, rel: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// The location `name` below this one (a catalogue's member).
    pub fn child(&self, name: &str) -> Location {
        Location {
            url: self.url.join(&format!("{name}/")).unwrap_or_else(|_| self.url.clone()),
            store: self.store.clone(),
            prefix: self.prefix.clone().join(name),
            part_bytes: self.part_bytes,
        }
    }

    /// The remote manifest, or `None` when nothing was shipped here.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.path_of("manifest.json");
        let bytes = match self.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(remote_err("read", self.url_of("manifest.json")))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote_err("read", self.url_of("manifest.json"))(e)),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Remote(format!(
                "the snapshot manifest at {} does not parse ({e}); ship the snapshots there again ('fathom snapshot --snapshots {}')",
                self.url_of("manifest.json"),
                self.url
            ))
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Remote(format!(
                "the snapshot manifest at {} has format {} but this fathom reads format {MANIFEST_FORMAT}",
                self.url_of("manifest.json"),
                m.format
            )));
        }
        Ok(Some(m))
    }

    /// The members of a catalogue: every directory right under this
    /// location that holds a `manifest.json`, by name.
    pub async fn members(&self) -> Result<Vec<(String, Location)>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(remote_err("list", &self.url))?;
        let mut out = Vec::new();
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let member = self.child(&name);
            if member.manifest().await?.is_some() {
                out.push((name, member));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every object under this location, by path relative to it, with its size.
    async fn objects(&self, under: &str) -> Result<BTreeMap<String, u64>> {
        let base = self.path_of(under);
        let prefix_len = self.prefix.parts().count();
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(remote_err("list", self.url_of(under)))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .parts()
                    .skip(prefix_len)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (rel.join("/"), m.size)
            })
            .collect())
    }

    /// Uploads one local file to `rel`: one PUT, or a multipart upload
    /// (invisible until complete, aborted on error) for large files.
    async fn upload(&self, local: &Path, rel: &str) -> Result<u64> {
        let bytes = std::fs::read(local).map_err(|source| Error::Io {
            action: "read",
            path: local.to_path_buf(),
            source,
        })?;
        let n = bytes.len() as u64;
        let path = self.path_of(rel);
        let target = self.url_of(rel);
        if bytes.len() <= self.part_bytes {
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(remote_err("upload", &target))?;
            return Ok(n);
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(remote_err("start the upload of", &target))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        for chunk in bytes.chunks(self.part_bytes) {
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(remote_err("upload", &target)(e));
            }
            writer.write(chunk);
        }
        // A failed completion leaves the parts invisible; S3 drops them by
        // the bucket's lifecycle rule for incomplete multipart uploads.
        writer
            .finish()
            .await
            .map_err(remote_err("finish the upload of", &target))?;
        Ok(n)
    }

    /// Brings this location up to the local snapshots (and, when given,
    /// the local checkpoint directory): see the module documentation.
    pub async fn ship(&self, local: &Snapshots, checkpoints: Option<&Path>) -> Result<ShipReport> {
        let manifest = local.manifest()?;
        let mut report = ShipReport {
            upto_seq: manifest.upto_seq,
            ..ShipReport::default()
        };
        let remote = self.manifest().await?;
        let mut present = self.objects("").await?;
        present.retain(|rel, _| !rel.starts_with("checkpoints/") && rel != "manifest.json");
        let shipped: HashMap<&str, &str> = remote
            .as_ref()
            .map(|m| m.files.iter().map(|f| (f.path.as_str(), f.digest.as_str())).collect())
            .unwrap_or_default();
        if manifest.generation == 0 && remote.is_none() {
            return Ok(report);
        }
        for f in &manifest.files {
            let same =
                present.get(&f.path) == Some(&f.bytes) && shipped.get(f.path.as_str()) == Some(&f.digest.as_str());
            if same {
                continue;
            }
            report.bytes += self.upload(&local.path_of(f), &f.path).await?;
            report.files += 1;
        }
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        self.store
            .put(&self.path_of("manifest.json"), PutPayload::from(text))
            .await
            .map_err(remote_err("upload", self.url_of("manifest.json")))?;
        // Objects no manifest names any more: compacted files, and complete
        // uploads of a ship that was interrupted before its manifest.
        let named: std::collections::HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        for rel in present.keys() {
            if !named.contains(rel.as_str()) {
                self.store
                    .delete(&self.path_of(rel))
                    .await
                    .map_err(remote_err("delete", self.url_of(rel)))?;
                report.removed += 1;
            }
        }
        if let Some(dir) = checkpoints.filter(|d| d.is_dir()) {
            let remote_cp = self.objects("checkpoints").await?;
            for (rel, file) in files_under(dir, "checkpoints")? {
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                if remote_cp.get(&rel) == Some(&size) {
                    continue;
                }
                report.bytes += self.upload(&file, &rel).await?;
                report.checkpoint_files += 1;
            }
        }
        Ok(report)
    }
}

/// Every file under `dir`, as (`<name>/relative/path`, absolute path).
fn files_under(dir: &Path, name: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), name.to_string())];
    while let Some((d, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| Error::Io {
            action: "list",
            path: d.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            let r = format!("{rel}/{}", e.file_name().to_string_lossy());
            if p.is_dir() {
                stack.push((p, r));
            } else if p.is_file() {
                out.push((r, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What one ship did.
#[derive(Debug, Clone, Default)]
pub struct ShipReport {
    /// The shipped manifest's `upto_seq`.
    pub upto_seq: u64,
    /// Snapshot files uploaded.
    pub files: usize,
    /// Checkpoint files uploaded.
    pub checkpoint_files: usize,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Objects deleted because the manifest no longer names them.
    pub removed: usize,
}

/// Runs a ship on a small runtime of its own, on a thread of its own, so
/// synchronous callers inside or outside an async runtime (the snapshot
/// thread, the last snapshot of a command, `fathom snapshot`) can wait for it.
pub fn ship_blocking(to: &Location, local: &Snapshots, checkpoints: Option<&Path>) -> Result<ShipReport> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Io {
                        action: "start a runtime to ship snapshots to",
                        path: PathBuf::from(to.url.as_str()),
                        source,
                    })?;
                rt.block_on(to.ship(local, checkpoints))
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the ship thread panicked".into())))
    })
}
