//! `fathom rebuild`: every table recomputed from the raw log into another
//! directory, and compared with the committed snapshots row by row. The
//! snapshots are a cache of the log; this is how a user proves it.

use std::fs;
use std::path::Path;

use arrow_array::{Array, RecordBatch};

use super::{Manifest, Projector, SnapshotOptions, Snapshots, io, sort_batch, tables};
use crate::{Error, Result, Store};
use fathom_core::Seq;

/// Where one table's rebuilt rows first differ from the committed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The row's key: `seq 123` (or `run_id r-2` for `runs`), or the row number.
    pub row: String,
    /// The first differing column, or `rows` when one side has a row the other lacks.
    pub column: String,
    /// The committed value.
    pub committed: String,
    /// The rebuilt value.
    pub rebuilt: String,
}

/// One table compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    /// The table.
    pub table: String,
    /// Rows in the committed snapshot files.
    pub committed_rows: usize,
    /// Rows rebuilt from the log.
    pub rebuilt_rows: usize,
    /// The first difference, if any.
    pub difference: Option<Difference>,
    /// Committed files whose bytes no longer match the manifest's digest.
    pub altered_files: Vec<String>,
}

/// What a rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// The committed snapshots (and so the rebuild) cover events up to here.
    pub upto_seq: u64,
    /// Events read from the log.
    pub events: u64,
    /// Every table, in the order of the table list.
    pub tables: Vec<TableCheck>,
}

impl RebuildReport {
    /// Whether every table agrees.
    pub fn agrees(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.difference.is_none() && t.altered_files.is_empty())
    }
}

fn one_line(column: &dyn Array, row: usize) -> String {
    let shown = format!("{:?}", column.slice(row, 1));
    // `StringArray\n[\n  "x",\n]` → `"x"`.
    let inner = shown
        .split_once('[')
        .map_or(shown.as_str(), |(_, rest)| rest.trim_end().trim_end_matches(']'));
    let text = inner.trim().trim_end_matches(',').trim().to_string();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

fn key_of(batch: &RecordBatch, row: usize) -> String {
    for name in ["seq", "run_id"] {
        if let Some(c) = batch.column_by_name(name) {
            return format!("{name} {}", one_line(c.as_ref(), row));
        }
    }
    format!("row {row}")
}

/// All of a table's rows from `files`, in key order.
fn load(snaps: &Snapshots, manifest: &Manifest, table: &tables::TableInfo) -> Result<RecordBatch> {
    let mut batches = Vec::new();
    for f in manifest.files_of(table.name) {
        batches.extend(snaps.read_file(f)?);
    }
    let all = arrow_select::concat::concat_batches(&table.schema, &batches)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", table.name)))?;
    let by: &[&str] = if all.schema().column_with_name("seq").is_some() {
        &["seq"]
    } else {
        table.sort
    };
    sort_batch(&all, by)
}

fn compare(table: &str, committed: &RecordBatch, rebuilt: &RecordBatch) -> TableCheck {
    let mut check = TableCheck {
        table: table.to_string(),
        committed_rows: committed.num_rows(),
        rebuilt_rows: rebuilt.num_rows(),
        difference: None,
        altered_files: Vec::new(),
    };
    let n = committed.num_rows().min(rebuilt.num_rows());
    let mut first: Option<(usize, String)> = None;
    for (i, field) in committed.schema().fields().iter().enumerate() {
        let (a, b) = (committed.column(i), rebuilt.column(i));
        if a.slice(0, n).to_data() == b.slice(0, n).to_data() {
            continue;
        }
        // The first differing row of this column (a binary search would
        // need ordered prefixes; a scan is fine for a failing check).
        if let Some(row) = (0..n).find(|&r| a.slice(r, 1).to_data() != b.slice(r, 1).to_data())
            && first.as_ref().is_none_or(|(r, _)| row < *r)
        {
            first = Some((row, field.name().clone()));
        }
    }
    if let Some((row, column)) = first {
        let c = committed.column_by_name(&column).expect("the column exists");
        let r = rebuilt.column_by_name(&column).expect("same schema");
        check.difference = Some(Difference {
            row: key_of(committed, row),
            column,
            committed: one_line(c.as_ref(), row),
            rebuilt: one_line(r.as_ref(), row),
        });
    } else if committed.num_rows() != rebuilt.num_rows() {
        let (longer, side) = if committed.num_rows() > n {
            (committed, "only in the committed snapshot")
        } else {
            (rebuilt, "only in the rebuild")
        };
        check.difference = Some(Difference {
            row: key_of(longer, n),
            column: "rows".into(),
            committed: if longer.num_rows() == committed.num_rows() {
                side.into()
            } else {
                "(missing)".into()
            },
            rebuilt: if longer.num_rows() == rebuilt.num_rows() {
                side.into()
            } else {
                "(missing)".into()
            },
        });
    }
    check
}

impl Store {
    /// Recomputes every table from the log, up to the committed snapshots'
    /// last event, as Parquet files under `into` (which must not exist; it
    /// is a snapshot root of its own afterwards), and compares each table
    /// with the committed files row by row.
    pub fn rebuild(&self, into: &Path, opts: &SnapshotOptions, progress: &mut dyn FnMut(u64)) -> Result<RebuildReport> {
        if into.exists() {
            return Err(Error::Internal(format!(
                "{} already exists; rebuild writes into a new directory",
                into.display()
            )));
        }
        let committed_snaps = self.snapshots();
        let committed = committed_snaps.manifest()?;
        let out = Snapshots::new(into);
        fs::create_dir_all(out.tmp_dir()).map_err(io("create", into))?;
        let mut rebuilt = Manifest {
            format: committed.format.max(super::MANIFEST_FORMAT),
            ..Manifest::default()
        };
        let window = opts.window_events.max(1);
        let mut report = RebuildReport {
            upto_seq: committed.upto_seq,
            ..RebuildReport::default()
        };
        while rebuilt.upto_seq < committed.upto_seq {
            let first = rebuilt.upto_seq + 1;
            let end = committed.upto_seq.min(rebuilt.upto_seq + window);
            let mut projector = Projector::new(&rebuilt.carry);
            for rec in self.range(Seq(first)..=Seq(end)) {
                projector.push(&rec?);
            }
            rebuilt.carry = projector.carry();
            rebuilt.upto_seq = end;
            for (table, batch) in projector.take_batches() {
                let range = if table == "runs" { (1, end) } else { (first, end) };
                if table == "runs" {
                    for old in rebuilt.files.iter().filter(|f| f.table == "runs") {
                        let _ = fs::remove_file(out.path_of(old));
                    }
                    rebuilt.files.retain(|f| f.table != "runs");
                }
                rebuilt.files.push(out.write_file(table, &batch, range, opts)?);
            }
            report.events += end + 1 - first;
            progress(report.events);
        }
        rebuilt.generation = 1;
        out.commit_manifest(&rebuilt)?;
        let _ = fs::remove_dir(out.tmp_dir());
        for t in tables::all() {
            let a = load(&committed_snaps, &committed, &t)?;
            let b = load(&out, &rebuilt, &t)?;
            let mut check = compare(t.name, &a, &b);
            for f in committed.files_of(t.name) {
                let path = committed_snaps.path_of(f);
                let bytes = fs::read(&path).map_err(io("read", &path))?;
                if blake3::hash(&bytes).to_hex().as_str() != f.digest {
                    check.altered_files.push(f.path.clone());
                }
            }
            report.tables.push(check);
        }
        Ok(report)
    }
}
