//! Query results as text: an aligned table, CSV (nested values as JSON
//! text) and JSON.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

/// An aligned text table.
pub fn table(batches: &[RecordBatch]) -> String {
    match pretty_format_batches(batches) {
        Ok(t) => t.to_string(),
        Err(e) => format!("(could not format the result: {e})"),
    }
}

/// CSV with a header line. List, struct and map values are written as
/// JSON text (`["Paris","paris"]`), as DuckDB writes them.
pub fn csv(batches: &[RecordBatch]) -> Result<String, String> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in batches {
            w.write(&nested_as_json(b)?).map_err(|e| e.to_string())?;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// `batch` with every nested column replaced by its values' JSON text
/// (null stays null).
fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch, String> {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, column) in schema.fields().iter().zip(batch.columns()) {
        if !f.data_type().is_nested() {
            fields.push(f.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        // One row per line, each an object holding the column's value
        // (absent when null).
        let one = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", f.data_type().clone(), true)])),
            vec![column.clone()],
        )
        .map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut lines);
            w.write(&one).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
        let text = String::from_utf8(lines).map_err(|e| e.to_string())?;
        let mut values: Vec<Option<String>> = Vec::with_capacity(batch.num_rows());
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            values.push(row.get("v").map(|v| v.to_string()));
        }
        fields.push(Field::new(f.name(), DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(values)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// A JSON array of objects, one per row.
pub fn json(batches: &[RecordBatch]) -> Result<String, String> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        w.write_batches(&refs).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let text = String::from_utf8(out).map_err(|e| e.to_string())?;
    Ok(if text.is_empty() { "[]".into() } else { text })
}
