//! Question sets in verl's Parquet layout, as DeepResearcher ships them.
//!
//! Columns: `data_source` (string), `prompt` (list of `{content, role}`),
//! `ability` (string), `reward_model` (`{ground_truth, style}`, ground
//! truths joined by `<|answer_split|>`), `extra_info` (`{index, split}`;
//! `index` may be a string or an integer; fathom's sandbox sets add
//! `sandbox_seed` and `sandbox_entities`, the world their answers hold in).
//! The same reader serves the paper's `dev.parquet` / `test.parquet` and
//! fathom's sandbox sets.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};

/// Separates alternative ground truths.
pub const ANSWER_SPLIT: &str = "<|answer_split|>";

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `user`, `system`, …
    pub role: String,
    /// The text.
    pub content: String,
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerlRow {
    /// Which data set (`nq`, `musique`, `sandbox-2hop`, …).
    pub data_source: String,
    /// The prompt messages; the last user message is the question.
    pub prompt: Vec<Message>,
    /// verl's ability label.
    pub ability: String,
    /// Accepted answers joined by [`ANSWER_SPLIT`].
    pub ground_truth: String,
    /// verl's reward style label.
    pub style: String,
    /// The question's id in its data set.
    pub index: String,
    /// The split (`dev`, `test`, …).
    pub split: String,
    /// For a sandbox question: the seed and size of the sandbox world it
    /// was generated from (its answers hold only there).
    pub sandbox_world: Option<(u64, u64)>,
}

impl VerlRow {
    /// The question: the last user message.
    pub fn question(&self) -> &str {
        self.prompt
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }

    /// The accepted answers.
    pub fn ground_truths(&self) -> Vec<String> {
        self.ground_truth
            .split(ANSWER_SPLIT)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The hop count, where the data says it: MuSiQue ids (`2hop__…`) and
    /// sandbox sources (`sandbox-3hop`).
    pub fn hops(&self) -> Option<u32> {
        [self.index.as_str(), self.data_source.as_str()].iter().find_map(|s| {
            let at = s.find("hop")?;
            let digits: String = s[..at].chars().rev().take_while(char::is_ascii_digit).collect();
            digits.chars().rev().collect::<String>().parse().ok()
        })
    }
}

/// A question file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct VerlError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong, and what to do.
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> VerlError {
    VerlError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The verl layout, as pyarrow writes it.
fn schema() -> Schema {
    let message = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    Schema::new(vec![
        Field::new("data_source", DataType::Utf8, true),
        Field::new(
            "prompt",
            DataType::List(Arc::new(Field::new("element", DataType::Struct(message), true))),
            true,
        ),
        Field::new("ability", DataType::Utf8, true),
        Field::new(
            "reward_model",
            DataType::Struct(Fields::from(vec![
                Field::new("ground_truth", DataType::Utf8, true),
                Field::new("style", DataType::Utf8, true),
            ])),
            true,
        ),
        Field::new(
            "extra_info",
            DataType::Struct(Fields::from(vec![
                Field::new("index", DataType::Utf8, true),
                Field::new("split", DataType::Utf8, true),
                Field::new("sandbox_seed", DataType::UInt64, true),
                Field::new("sandbox_entities", DataType::UInt64, true),
            ])),
            true,
        ),
    ])
}

/// Writes rows as a verl Parquet file (zstd), atomically: a partly written
/// file is never visible under `path`.
pub fn write(path: &Path, rows: &[VerlRow]) -> Result<(), VerlError> {
    let schema = Arc::new(schema());
    let strings = |f: &dyn Fn(&VerlRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(|r| Some(f(r))).collect::<Vec<_>>()))
    };
    let message_fields = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    let mut prompts = ListBuilder::new(StructBuilder::from_fields(message_fields.clone(), rows.len()))
        .with_field(Arc::new(Field::new("element", DataType::Struct(message_fields), true)));
    for r in rows {
        let s = prompts.values();
        for m in &r.prompt {
            s.field_builder::<StringBuilder>(0)
                .expect("content")
                .append_value(&m.content);
            s.field_builder::<StringBuilder>(1).expect("role").append_value(&m.role);
            s.append(true);
        }
        prompts.append(true);
    }
    let pair = |a: &str, fa: &dyn Fn(&VerlRow) -> &str, b: &str, fb: &dyn Fn(&VerlRow) -> &str| -> ArrayRef {
        Arc::new(StructArray::from(vec![
            (Arc::new(Field::new(a, DataType::Utf8, true)), strings(fa)),
            (Arc::new(Field::new(b, DataType::Utf8, true)), strings(fb)),
        ]))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.data_source),
        Arc::new(prompts.finish()),
        strings(&|r| &r.ability),
        pair("ground_truth", &|r| &r.ground_truth, "style", &|r| &r.style),
        {
            let world = |f: fn((u64, u64)) -> u64| -> ArrayRef {
                Arc::new(arrow_array::UInt64Array::from(
                    rows.iter().map(|r| r.sandbox_world.map(f)).collect::<Vec<_>>(),
                ))
            };
            Arc::new(StructArray::from(vec![
                (
                    Arc::new(Field::new("index", DataType::Utf8, true)),
                    strings(&|r| &r.index),
                ),
                (
                    Arc::new(Field::new("split", DataType::Utf8, true)),
                    strings(&|r| &r.split),
                ),
                (
                    Arc::new(Field::new("sandbox_seed", DataType::UInt64, true)),
                    world(|w| w.0),
                ),
                (
                    Arc::new(Field::new("sandbox_entities", DataType::UInt64, true)),
                    world(|w| w.1),
                ),
            ]))
        },
    ];
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| err(path, format!("building the table: {e}")))?;
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| err(path, format!("cannot create {}: {e}", tmp.display())))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))
        .map_err(|e| err(path, format!("starting the Parquet writer: {e}")))?;
    writer
        .write(&batch)
        .map_err(|e| err(path, format!("writing rows: {e}")))?;
    let file = writer
        .into_inner()
        .map_err(|e| err(path, format!("finishing the file: {e}")))?;
    file.sync_all().map_err(|e| err(path, format!("syncing: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, format!("renaming {} into place: {e}", tmp.display())))?;
    Ok(())
}

/// Reads a verl Parquet question file.
pub fn read(path: &Path) -> Result<Vec<VerlRow>, VerlError> {
    let file = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| err(path, format!("not a Parquet file: {e}")))?
        .build()
        .map_err(|e| err(path, format!("cannot read: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(path, format!("cannot read a row group: {e}")))?;
        rows.extend(rows_of(path, &batch)?);
    }
    Ok(rows)
}

fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, VerlError> {
    batch.column_by_name(name).ok_or_else(|| {
        err(
            path,
            format!(
                "has no '{name}' column, so it is not a verl question file (expected data_source, prompt, ability, reward_model, extra_info)"
            ),
        )
    })
}

/// A text value, accepting strings and integers (verl's `index`).
fn text_at(a: &dyn Array, i: usize) -> String {
    if a.is_null(i) {
        return String::new();
    }
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<arrow_array::types::Int64Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<arrow_array::types::Int32Type>().value(i).to_string(),
        _ => String::new(),
    }
}

fn field_text(s: &StructArray, name: &str, i: usize) -> String {
    s.column_by_name(name)
        .map(|c| text_at(c.as_ref(), i))
        .unwrap_or_default()
}

/// An unsigned integer field of a struct column, if present and not null
/// (written as text by other tools, it is parsed).
fn field_u64(s: &StructArray, name: &str, i: usize) -> Option<u64> {
    let c = s.column_by_name(name)?;
    if c.is_null(i) {
        return None;
    }
    match c.as_primitive_opt::<arrow_array::types::UInt64Type>() {
        Some(a) => Some(a.value(i)),
        None => match c.as_primitive_opt::<arrow_array::types::Int64Type>() {
            Some(a) => u64::try_from(a.value(i)).ok(),
            None => text_at(c.as_ref(), i).trim().parse().ok(),
        },
    }
}

fn rows_of(path: &Path, batch: &RecordBatch) -> Result<Vec<VerlRow>, VerlError> {
    let data_source = column(path, batch, "data_source")?;
    let prompt = column(path, batch, "prompt")?;
    let reward = column(path, batch, "reward_model")?;
    let ability = batch.column_by_name("ability");
    let extra = batch.column_by_name("extra_info");
    let prompt = prompt
        .as_list_opt::<i32>()
        .ok_or_else(|| err(path, "column 'prompt' is not a list of {content, role}"))?;
    let reward = reward
        .as_struct_opt()
        .ok_or_else(|| err(path, "column 'reward_model' is not a struct with ground_truth"))?;
    let extra = extra.and_then(|e| e.as_struct_opt());
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let messages = prompt.value(i);
        let messages = messages.as_struct_opt().ok_or_else(|| {
            err(
                path,
                "column 'prompt' holds something other than {content, role} structs",
            )
        })?;
        let prompt = (0..messages.len())
            .map(|j| Message {
                role: field_text(messages, "role", j),
                content: field_text(messages, "content", j),
            })
            .collect();
        out.push(VerlRow {
            data_source: text_at(data_source.as_ref(), i),
            prompt,
            ability: ability.map(|a| text_at(a.as_ref(), i)).unwrap_or_default(),
            ground_truth: field_text(reward, "ground_truth", i),
            style: field_text(reward, "style", i),
            index: extra.map(|e| field_text(e, "index", i)).unwrap_or_default(),
            split: extra.map(|e| field_text(e, "split", i)).unwrap_or_default(),
            sandbox_world: extra
                .and_then(|e| Some((field_u64(e, "sandbox_seed", i)?, field_u64(e, "sandbox_entities", i)?))),
        });
    }
    Ok(out)
}
