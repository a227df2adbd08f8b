//! `docs/TABLES.md` is rendered from the table definitions, so the column
//! reference cannot drift from the code. Regenerate with
//! `UPDATE_EXPECT=1 cargo test --workspace --test it -- tables_reference`.

use fathom_store::snapshot::tables;

fn render() -> String {
    let mut out = String::new();
    out.push_str("# Tables\n\n");
    out.push_str(
        "Generated from `store/src/snapshot/tables.rs` by a test; do not edit by hand.\n\n\
         fathom's SQL tables (`fathom sql`) and its Parquet snapshots have the same schema. Each table is one\n\
         directory of Parquet files under `<data>/snapshots/`, zstd-compressed, sorted by its sort key within each\n\
         file; `snapshots/manifest.json` names the committed files (see `store/README.md`, section Snapshots).\n\
         Every row comes from one event of the log, its *key event*, whose sequence number is the row's `seq`\n\
         column, unique within the table. Ids are text as the CLI prints them (`r-3`, `e-17`, `w-42`, `c-4`);\n\
         times are microseconds in UTC; durations are milliseconds as doubles.\n\n\
         | table | a row is | key events | sort key |\n|---|---|---|---|\n",
    );
    let all = tables::all();
    for t in &all {
        let keys = if t.key.is_empty() {
            "every event".to_string()
        } else {
            t.key
                .iter()
                .map(|k| format!("`{}`", k.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let first = t.doc.split(". ").next().unwrap_or(t.doc).trim_end_matches('.');
        out.push_str(&format!(
            "| [`{name}`](#{name}) | {first}. | {keys} | {sort} |\n",
            name = t.name,
            sort = t.sort.join(", ")
        ));
    }
    for t in &all {
        out.push_str(&format!(
            "\n## {}\n\n{}\n\n| column | type | null | meaning |\n|---|---|---|---|\n",
            t.name, t.doc
        ));
        for c in &t.columns {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                c.name,
                c.sql_type,
                if c.nullable { "yes" } else { "no" },
                c.doc.replace('|', "\\|")
            ));
        }
    }
    out.push_str(
        "\n## Views\n\nDefined in `query/src/lib.rs` on top of the tables (documented in `docs/SQL.md`): \
         `step_metrics`, `behaviour_rates` and `replays`.\n",
    );
    out
}

#[test]
fn tables_reference_is_up_to_date() {
    let rendered = render();
    assert!(rendered.contains("## episodes"));
    expect_test::expect_file!["../../../docs/TABLES.md"].assert_eq(&rendered);
}

#[test]
fn every_schema_matches_its_documented_columns() {
    for t in tables::all() {
        let names: Vec<&str> = t.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let documented: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
        assert_eq!(names, documented, "{}", t.name);
        assert!(names.contains(&"seq"), "{} has a seq column", t.name);
        for s in t.sort {
            assert!(names.contains(s), "{} sorts by an existing column {s}", t.name);
        }
        for c in &t.columns {
            assert!(!c.doc.is_empty(), "{}.{} is documented", t.name, c.name);
        }
    }
}
