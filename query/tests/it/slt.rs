//! Runs every `query/tests/slt/*.slt` file against the fixture log split
//! four ways between snapshot files and the log's tail; the expected
//! results are the same for all four, so the split can never show.
//!
//! `UPDATE_SLT=1` rewrites the files with the results of the first mode
//! (then review the diff).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use fathom_query::datafusion::arrow::array::Array;
use fathom_query::datafusion::arrow::datatypes::DataType;
use fathom_query::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use fathom_query::{Db, OpenOptions, QueryError};
use fathom_store::snapshot::SnapshotOptions;
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::fixture;

struct Conn {
    db: Db,
}

#[derive(Debug)]
struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

#[async_trait]
impl sqllogictest::AsyncDB for Conn {
    type Error = Failure;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failure> {
        let batches = self.db.sql(sql).await.map_err(|e: QueryError| Failure(e.to_string()))?;
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => self.db.schema_of(sql).await.map_err(|e| Failure(e.to_string()))?,
        };
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => DefaultColumnType::Integer,
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => DefaultColumnType::FloatingPoint,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, col)| {
                            // One row per line: newlines in text are shown escaped.
                            let text = f.value(row).to_string().replace('\n', "\\n");
                            if col.is_valid(row) && text.is_empty() {
                                "(empty)".to_string()
                            } else {
                                text
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "fathom"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

/// The four ways to hold the fixture.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Nothing snapshotted: every row comes from the log.
    TailOnly,
    /// The first part snapshotted (ending inside an episode), the rest
    /// from the log: the carry must continue the open episode.
    Mixed,
    /// Everything snapshotted in 7-event windows (many files); files only.
    ManyFiles,
    /// The same, then compacted; files only.
    Compacted,
}

fn build(dir: &Path, mode: Mode) -> bool {
    let store = fixture::open(dir);
    let events = fixture::events(&store);
    // Cut inside an episode of the second step.
    let cut = events
        .iter()
        .position(|e| e.kind() == fathom_core::EventKind::ToolCalled && e.ts.0 > events[events.len() / 3].ts.0)
        .expect("a tool call in the middle");
    let small = SnapshotOptions {
        window_events: 7,
        compact_min_files: 1000,
        ..SnapshotOptions::default()
    };
    match mode {
        Mode::TailOnly => fixture::append(&store, &events),
        Mode::Mixed => {
            fixture::append(&store, &events[..cut]);
            store.snapshot(&SnapshotOptions::default()).expect("snapshot");
            fixture::append(&store, &events[cut..]);
        }
        Mode::ManyFiles | Mode::Compacted => {
            fixture::append(&store, &events[..cut]);
            store.snapshot(&small).expect("snapshot");
            fixture::append(&store, &events[cut..]);
            store.snapshot(&small).expect("snapshot");
            let files = store.snapshots().manifest().expect("manifest").files.len();
            assert!(files > 50, "expected many small files, got {files}");
            if matches!(mode, Mode::Compacted) {
                let compact = SnapshotOptions {
                    compact_min_files: 2,
                    ..SnapshotOptions::default()
                };
                let report = store.snapshot(&compact).expect("compaction");
                assert!(!report.compactions.is_empty(), "compaction ran");
                let after = store.snapshots().manifest().expect("manifest").files.len();
                assert!(after < 20, "compaction merged the files: {after} left of {files}");
            }
        }
    }
    store.close().expect("close");
    matches!(mode, Mode::ManyFiles | Mode::Compacted)
}

#[test]
fn sql_semantics_hold_however_rows_are_split_between_snapshots_and_the_log() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let update = std::env::var_os("UPDATE_SLT").is_some();
    for mode in [Mode::TailOnly, Mode::Mixed, Mode::ManyFiles, Mode::Compacted] {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots_only = build(dir.path(), mode);
        for file in slt_files() {
            let data = dir.path().to_path_buf();
            let mut runner = sqllogictest::Runner::new(move || {
                let data = data.clone();
                async move {
                    let db = Db::open(
                        &data,
                        OpenOptions {
                            snapshots_only,
                            target_partitions: 2,
                            ..OpenOptions::default()
                        },
                    )
                    .await
                    .map_err(|e| Failure(e.to_string()))?;
                    Ok(Conn { db })
                }
            });
            rt.block_on(async {
                if update && matches!(mode, Mode::TailOnly) {
                    runner
                        .update_test_file(
                            &file,
                            " ",
                            sqllogictest::default_validator,
                            sqllogictest::default_normalizer,
                            sqllogictest::default_column_validator,
                        )
                        .await
                        .expect("update");
                } else if let Err(e) = runner.run_file_async(&file).await {
                    panic!("{} in mode {mode:?}:\n{e}", file.display());
                }
            });
        }
    }
}
