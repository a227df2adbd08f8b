//! `fathom sql`: read-only SQL over the snapshots and the live log.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use fathom_core::{Clock, SystemClock};
use fathom_query::{Db, OpenOptions, QueryError};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Arguments of `fathom sql`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// The query. Without one, an interactive prompt (history in the data
    /// directory; `.tables`, `.schema TABLE`, `.help`).
    pub query: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Read the committed snapshot files only, not the log's newer events.
    #[arg(long)]
    pub snapshots_only: bool,
    /// Print how long the query took, on stderr.
    #[arg(long)]
    pub timing: bool,
    /// DataFusion threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Query every data directory's snapshots shipped under this prefix
    /// (s3://bucket/runs/ holding machine-a/, machine-b/, …) as one set of
    /// tables, each with a first column `origin` naming the member.
    #[arg(long, value_name = "URL", conflicts_with = "snapshots_only")]
    pub catalog: Option<String>,
    /// Run the query on a Ballista cluster (`fathom cluster scheduler`) at
    /// df://host:port: the same tables and views, from the committed snapshot
    /// files (local paths the executors can read, --snapshots URL, or every
    /// member of --catalog URL).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
}

pub fn run(
    data: &Path,
    args: SqlArgs,
    snapshots: Option<std::sync::Arc<fathom_store::remote::Location>>,
) -> anyhow::Result<ExitCode> {
    let catalog = args.catalog.as_deref().map(crate::location).transpose()?;
    if catalog.is_none()
        && snapshots.is_none()
        && !data.join("log").exists()
        && !data.join("snapshots").join("manifest.json").exists()
    {
        anyhow::bail!(
            "{} holds no fathom log or snapshots; pass --data (or FATHOM_DATA) with a data directory that a run wrote",
            data.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    runtime.block_on(async move {
        let clock = SystemClock;
        let t0 = clock.now();
        let opts = OpenOptions {
            snapshots_only: args.snapshots_only,
            target_partitions: args.threads,
            snapshots,
            catalog,
        };
        let mut db = match &args.cluster {
            None => Db::open(data, opts).await?,
            Some(url) => {
                use ballista::prelude::SessionContextExt as _;
                use fathom_query::datafusion::execution::session_state::SessionStateBuilder;
                use fathom_query::datafusion::prelude::SessionContext;
                let (host, port) = crate::cluster::host_port(url, "--cluster")?;
                let state = SessionStateBuilder::new()
                    .with_config(fathom_query::session_config(&opts))
                    .with_default_features()
                    .build();
                let ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state)
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to the cluster at {url}: {e}"))?;
                Db::open_on(ctx, data, opts).await?
            }
        };
        if let Some(note) = &db.source().tail_note
            && !db.source().tail_read
        {
            eprintln!("note: {note}");
        }
        let opened = clock.now();
        match &args.query {
            Some(q) => {
                let code = run_one(&mut db, q, args.format).await;
                if args.timing {
                    let done = clock.now();
                    eprintln!(
                        "time: {:.1} ms (open {:.1} ms, query {:.1} ms)",
                        done.nanos_since(t0) as f64 / 1e6,
                        opened.nanos_since(t0) as f64 / 1e6,
                        done.nanos_since(opened) as f64 / 1e6
                    );
                }
                Ok(code)
            }
            None => repl(data, &mut db, args.format, args.timing).await,
        }
    })
}

async fn run_one(db: &mut Db, query: &str, format: Format) -> ExitCode {
    match db.sql(query).await {
        Ok(batches) => match print(&batches, format) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader of the output went away (`| head`).
            Err(e) if crate::broken_pipe(&e) => std::process::exit(141),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn report(e: &QueryError) {
    eprintln!("error: {e}");
}

fn print(batches: &[fathom_query::datafusion::arrow::record_batch::RecordBatch], format: Format) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let mut t = fathom_query::format::table(batches);
            t.push_str(&format!("\n({rows} row{})", if rows == 1 { "" } else { "s" }));
            t
        }
        Format::Csv => fathom_query::format::csv(batches).map_err(anyhow::Error::msg)?,
        Format::Json => fathom_query::format::json(batches).map_err(anyhow::Error::msg)?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())?;
    out.flush()?;
    Ok(())
}

const HELP: &str = "End a statement with ';'. Commands:
  .tables            tables and views, with what a row is
  .schema TABLE      the columns of a table
  .format table|csv|json
  .timing on|off
  .help              this text
  .quit              leave (or Ctrl-D)
The tables and their columns are documented in docs/TABLES.md; example queries in docs/SQL.md.";

async fn repl(data: &Path, db: &mut Db, mut format: Format, mut timing: bool) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = data.join("sql_history");
    let _ = editor.load_history(&history);
    eprintln!(
        "fathom sql: events up to {}{}. '.help' for help, '.quit' to leave.",
        db.source().last_seq,
        if db.source().tail_read { "" } else { " (snapshots only)" }
    );
    let clock = SystemClock;
    let mut buffer = String::new();
    let mut failed = false;
    loop {
        let prompt = if buffer.is_empty() { "fathom> " } else { "   ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('.') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(".quit" | ".exit"), _) => break,
                (Some(".help"), _) => println!("{HELP}"),
                (Some(".tables"), _) => {
                    for (name, doc) in fathom_query::catalogue() {
                        println!("{name:<16} {doc}");
                    }
                }
                (Some(".schema"), Some(table)) => match fathom_store::snapshot::tables::info(table) {
                    Some(info) => {
                        for c in &info.columns {
                            println!(
                                "{:<18} {:<22} {}",
                                c.name,
                                format!("{}{}", c.sql_type, if c.nullable { "" } else { " NOT NULL" }),
                                c.doc
                            );
                        }
                    }
                    None => eprintln!("error: no table '{table}'; '.tables' lists them"),
                },
                (Some(".format"), Some(f)) => match f {
                    "table" => format = Format::Table,
                    "csv" => format = Format::Csv,
                    "json" => format = Format::Json,
                    other => eprintln!("error: unknown format '{other}'; use table, csv or json"),
                },
                (Some(".timing"), Some(v)) => timing = v == "on",
                (Some(cmd), _) => eprintln!("error: unknown command '{cmd}'; '.help' lists the commands"),
                (None, _) => {}
            }
            continue;
        }
        if trimmed.is_empty() && buffer.is_empty() {
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(statement.trim());
        let t0 = clock.now();
        match db.sql(statement.trim().trim_end_matches(';')).await {
            Ok(batches) => {
                if let Err(e) = print(&batches, format) {
                    eprintln!("error: {e}");
                }
            }
            Err(e) => {
                failed = true;
                report(&e);
            }
        }
        if timing {
            eprintln!("time: {:.1} ms", clock.now().nanos_since(t0) as f64 / 1e6);
        }
    }
    if !buffer.trim().is_empty() {
        eprintln!("note: the last statement had no closing ';' and was not run");
    }
    if data.exists() {
        let _ = editor.save_history(&history);
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
