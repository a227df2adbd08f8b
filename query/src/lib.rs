//! Read-only SQL (DataFusion) over the Parquet snapshots and the live tail
//! of the log.
//!
//! [`Db::open`] registers every table of [`fathom_store::snapshot::tables`]
//! in a DataFusion [`SessionContext`]. Each table is the union of its
//! committed snapshot files (by the manifest, never by listing a directory)
//! and the rows of the log's events after the manifest's `upto_seq`, built
//! in memory by the same projector the snapshotter uses, continuing from the
//! manifest's carry. So a query sees every acknowledged event, and a table
//! read from the files alone (by DuckDB, Spark) equals the SQL table once a
//! snapshot has caught up.
//!
//! When another process (a training run) holds the log, the tail comes from
//! that writer's read endpoint ([`fathom_store::tail`]); a writer without
//! one leaves the queries with the snapshots only, and [`Db::source`] says
//! how far they reach.
//!
//! Views on top: `step_metrics`, `behaviour_rates` and `replays` (see `docs/SQL.md`).
//!
//! **Architecture Invariant:** this crate never writes to the log. SQL is
//! read-only: no DDL, no DML, no `COPY`, no `SET`, no external tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider as _, Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use fathom_store::remote::Location;
use fathom_store::snapshot::{FileEntry, Manifest, Projector, SnapshotProblem, Snapshots, TableInfo, tables};
use fathom_store::{Options, Store};

pub use datafusion;

/// Errors of the SQL layer, worded for the person at the prompt.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query is not valid or refers to something that does not exist.
    #[error("{0}")]
    Sql(String),
    /// The query would change something.
    #[error("{0}")]
    ReadOnly(String),
    /// Reading the snapshots or the log failed.
    #[error(transparent)]
    Store(#[from] fathom_store::Error),
    /// DataFusion failed while executing.
    #[error("query failed: {0}")]
    Execution(String),
}

impl QueryError {
    /// Whether the error is a snapshot file compacted away after the
    /// tables were opened (reopening and retrying succeeds).
    pub fn is_stale(&self) -> bool {
        matches!(self, QueryError::Execution(msg) if is_missing_file(msg))
    }
}

/// Where a [`Db`]'s rows come from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Events covered by committed snapshot files.
    pub snapshot_upto: u64,
    /// Snapshot files registered.
    pub files: usize,
    /// The last event seen (the log's end when the tail was read).
    pub last_seq: u64,
    /// Whether the log's tail after the snapshots was read.
    pub tail_read: bool,
    /// Why the tail was not read, when it was not.
    pub tail_note: Option<String>,
}

/// How long a reader that finds a writer waits for the writer's read
/// endpoint, which starts a moment after the writer opens the log.
const ENDPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How to open a [`Db`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Read the committed snapshots only, not the log's tail.
    pub snapshots_only: bool,
    /// DataFusion partitions (threads); 0 means one per core.
    pub target_partitions: usize,
    /// Read the snapshot files from this location (shipped there with
    /// `--snapshots URL`) instead of the data directory's `snapshots/`;
    /// the tail still comes from the local log when there is one.
    pub snapshots: Option<Arc<Location>>,
    /// Read every data directory's snapshots under this prefix as one
    /// catalogue (each member is a directory with a `manifest.json`); the
    /// tables gain a first column `origin`, the member's name.
    pub catalog: Option<Arc<Location>>,
}

/// Where a table's snapshot files are read from.
enum Files<'a> {
    Local(&'a Snapshots),
    Remote(&'a Location),
}

impl<'a> Files<'a> {
    /// The files of `opts.snapshots`, or of the data directory's `snapshots/`;
    /// a remote location's store is registered with `ctx`.
    fn of(ctx: &SessionContext, snaps: &'a Snapshots, opts: &'a OpenOptions) -> Files<'a> {
        match &opts.snapshots {
            None => Files::Local(snaps),
            Some(loc) => {
                ctx.register_object_store(&loc.store_url(), loc.object_store());
                Files::Remote(loc)
            }
        }
    }

    /// The manifest that names them; local files are checked against it
    /// (sizes, digests, coverage) before anything is answered from them.
    async fn manifest(snaps: &Snapshots, opts: &OpenOptions) -> Result<Manifest, QueryError> {
        match &opts.snapshots {
            None => Ok(snaps.checked_manifest(None)?),
            Some(loc) => remote_manifest(loc).await,
        }
    }

    fn url(&self, f: &FileEntry) -> Result<ListingTableUrl, QueryError> {
        match self {
            Files::Local(snaps) => ListingTableUrl::parse(snaps.path_of(f).to_string_lossy()).map_err(df_err),
            Files::Remote(loc) => ListingTableUrl::parse(loc.url_of(&f.path)).map_err(df_err),
        }
    }
}

/// A view's SQL for local tables (`catalogue = false`) or for a catalogue,
/// whose tables carry `origin`: `{o}` becomes `origin, `, `{x.o}` becomes
/// `x.origin, ` and `{x=y}` becomes `x.origin = y.origin AND ` (or nothing).
pub fn view_sql(body: &str, catalogue: bool) -> String {
    let mut out = String::with_capacity(body.len() + 64);
    let mut rest = body;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let marker = &rest[at + 1..at + end];
        if catalogue {
            if marker == "o" {
                out.push_str("origin, ");
            } else if let Some(alias) = marker.strip_suffix(".o") {
                out.push_str(&format!("{alias}.origin, "));
            } else if let Some((a, b)) = marker.split_once('=') {
                out.push_str(&format!("{a}.origin = {b}.origin AND "));
            }
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// A SQL session over one data directory.
pub struct Db {
    ctx: SessionContext,
    source: Source,
    data: PathBuf,
    opts: OpenOptions,
    /// Opened on a context made elsewhere (a cluster's client): never
    /// reopened locally.
    external: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("data", &self.data)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The views registered on top of the tables, with their documentation.
/// Their SQL marks where a catalogue of several data directories adds its
/// `origin` column (see [`view_sql`]).
pub const VIEWS: &[(&str, &str, &str)] = &[
    (
        "step_metrics",
        "Per run and step, over finished episodes (aborted ones excluded): episodes, reward mean and standard deviation, F1, EM, format-failure rate, and mean turns, tool calls, searches, browses and generated tokens per episode.",
        "SELECT {o}run_id, step, count(*) AS episodes,
                avg(reward) AS reward_mean, stddev_pop(reward) AS reward_std,
                avg(f1) AS f1, avg(em) AS em,
                avg(CASE WHEN format_ok THEN 0.0 ELSE 1.0 END) AS format_failure_rate,
                avg(CAST(n_turns AS DOUBLE)) AS turns, avg(CAST(n_tool_calls AS DOUBLE)) AS tool_calls,
                avg(CAST(n_searches AS DOUBLE)) AS searches, avg(CAST(n_browses AS DOUBLE)) AS browses,
                avg(CAST(n_tokens AS DOUBLE)) AS tokens
         FROM episodes WHERE ended_by <> 'aborted'
         GROUP BY {o}run_id, step",
    ),
    (
        "behaviour_rates",
        "Per run and step, the share of finished episodes (aborted ones excluded) showing each behaviour: planning, cross_validation, self_reflection, honesty.",
        "WITH flags AS (
             SELECT {o}run_id, episode_id,
                    max(CASE WHEN kind = 'planning' THEN 1.0 ELSE 0.0 END) AS planning,
                    max(CASE WHEN kind = 'cross_validation' THEN 1.0 ELSE 0.0 END) AS cross_validation,
                    max(CASE WHEN kind = 'self_reflection' THEN 1.0 ELSE 0.0 END) AS self_reflection,
                    max(CASE WHEN kind = 'honesty' THEN 1.0 ELSE 0.0 END) AS honesty
             FROM behaviours GROUP BY {o}run_id, episode_id)
         SELECT {e.o}e.run_id, e.step, count(*) AS episodes,
                avg(coalesce(f.planning, 0.0)) AS planning,
                avg(coalesce(f.cross_validation, 0.0)) AS cross_validation,
                avg(coalesce(f.self_reflection, 0.0)) AS self_reflection,
                avg(coalesce(f.honesty, 0.0)) AS honesty
         FROM episodes e LEFT JOIN flags f ON {e=f}e.run_id = f.run_id AND e.episode_id = f.episode_id
         WHERE e.ended_by <> 'aborted'
         GROUP BY {e.o}e.run_id, e.step",
    ),
    (
        "replays",
        "One row per re-run episode (`fathom replay --checkpoint` / `--policy`) beside its original: both runs, both policies, and the answer, reward, F1, turns and tool calls of each. Turn-by-turn comparisons join `turns` on `episode_id` and `turn`.",
        "SELECT {r.o}r.episode_id, r.run_id, rr.policy, r.replay_of AS original_id, o.run_id AS original_run_id,
                orr.policy AS original_policy, o.step,
                o.answer AS original_answer, r.answer,
                o.reward AS original_reward, r.reward, r.reward - o.reward AS reward_change,
                o.f1 AS original_f1, r.f1,
                o.n_turns AS original_turns, r.n_turns AS turns,
                o.n_tool_calls AS original_tool_calls, r.n_tool_calls AS tool_calls
         FROM episodes r JOIN episodes o ON {r=o}r.replay_of = o.episode_id
              LEFT JOIN runs rr ON {r=rr}r.run_id = rr.run_id
              LEFT JOIN runs orr ON {o=orr}o.run_id = orr.run_id",
    ),
];

/// A table made of several parts scanned as one (snapshot files and the
/// in-memory tail).
#[derive(Debug)]
struct Unioned {
    schema: SchemaRef,
    parts: Vec<Arc<dyn TableProvider>>,
}

#[async_trait]
impl TableProvider for Unioned {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Each part prunes with the filters it can use; DataFusion applies
        // them again above the union.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut plans = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            plans.push(part.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(plans)
    }
}

fn df_err(e: DataFusionError) -> QueryError {
    QueryError::Execution(e.to_string())
}

impl Db {
    /// Opens the tables of the data directory `data`.
    pub async fn open(data: &Path, opts: OpenOptions) -> Result<Db, QueryError> {
        if let Some(catalog) = opts.catalog.clone() {
            let ctx = SessionContext::new_with_config(session_config(&opts));
            return Db::open_catalog(ctx, data, &catalog, opts, false).await;
        }
        let snaps = Snapshots::new(data.join("snapshots"));
        let manifest = Files::manifest(&snaps, &opts).await?;
        let mut source = Source {
            snapshot_upto: manifest.upto_seq,
            files: manifest.files.len(),
            last_seq: manifest.upto_seq,
            tail_read: false,
            tail_note: None,
        };
        let tail = if opts.snapshots_only {
            source.tail_note = Some("--snapshots-only was given".into());
            None
        } else {
            match read_tail(data, &manifest) {
                Ok(Some((last, _))) if opts.snapshots.is_none() && last < manifest.upto_seq => {
                    // Events appended after such a manifest would never show.
                    let problem = SnapshotProblem::AheadOfLog {
                        upto_seq: manifest.upto_seq,
                        log_last: last,
                    };
                    return Err(QueryError::Store(fathom_store::Error::Snapshot(format!(
                        "the snapshots in {} disagree with the log: {problem}. {}",
                        snaps.root().display(),
                        problem.advice(snaps.root())
                    ))));
                }
                Ok(Some((last, batches))) => {
                    source.last_seq = last;
                    source.tail_read = true;
                    Some(batches)
                }
                Ok(None) => {
                    source.tail_read = true;
                    source.tail_note = Some("no log in this data directory".into());
                    None
                }
                Err(fathom_store::Error::InUse { holder, .. }) => {
                    // The writer serves its newest events on its endpoint
                    // (a moment after it opens the log: wait for that).
                    let clock = fathom_core::SystemClock;
                    let started = fathom_core::Clock::now(&clock);
                    let waiting =
                        || u128::from(fathom_core::Clock::now(&clock).nanos_since(started)) < ENDPOINT_WAIT.as_nanos();
                    let mut fetched = fathom_store::tail::fetch(data, fathom_core::Seq(manifest.upto_seq))?;
                    while fetched.is_none() && waiting() {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        fetched = fathom_store::tail::fetch(data, fathom_core::Seq(manifest.upto_seq))?;
                    }
                    match fetched {
                        Some(records) => {
                            let mut projector = Projector::new(&manifest.carry);
                            for rec in &records {
                                projector.push(rec);
                            }
                            source.last_seq = records.last().map_or(manifest.upto_seq, |r| r.seq.0);
                            source.tail_read = true;
                            source.tail_note = Some(format!("newest events read from the writer ({holder})"));
                            Some(projector.take_batches())
                        }
                        None => {
                            source.tail_note = Some(format!(
                                "the log is held by another fathom process ({holder}) that serves no read endpoint; showing the snapshots, which cover events up to {}",
                                manifest.upto_seq
                            ));
                            None
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ctx = SessionContext::new_with_config(session_config(&opts));
        let files = Files::of(&ctx, &snaps, &opts);
        for info in tables::all() {
            let provider = table_provider(&files, &manifest, &info, tail.as_deref()).await?;
            ctx.register_table(info.name, provider).map_err(df_err)?;
        }
        register_views(&ctx, false).await?;
        Ok(Db {
            ctx,
            source,
            data: data.to_path_buf(),
            opts,
            external: false,
        })
    }

    /// Registers the tables and views on a context made elsewhere (a
    /// Ballista client, `fathom sql --cluster`): every table from its
    /// committed snapshot files alone (what a cluster's executors can
    /// read), local, at `opts.snapshots`, or every member of
    /// `opts.catalog`. Files must be reachable by the executors under the
    /// same paths or URLs.
    pub async fn open_on(ctx: SessionContext, data: &Path, opts: OpenOptions) -> Result<Db, QueryError> {
        if let Some(catalog) = opts.catalog.clone() {
            return Db::open_catalog(ctx, data, &catalog, opts, true).await;
        }
        let snaps = Snapshots::new(data.join("snapshots"));
        let manifest = Files::manifest(&snaps, &opts).await?;
        if manifest.files.is_empty() {
            return Err(QueryError::Sql(format!(
                "there are no committed snapshot files to query in {}; run 'fathom snapshot' first",
                opts.snapshots
                    .as_ref()
                    .map_or_else(|| snaps.root().display().to_string(), |l| l.to_string())
            )));
        }
        let files = Files::of(&ctx, &snaps, &opts);
        for info in tables::all() {
            if manifest.files_of(info.name).next().is_none() {
                register_empty(&ctx, info.name, &info).await?;
                continue;
            }
            let provider = table_provider(&files, &manifest, &info, None).await?;
            ctx.register_table(info.name, provider).map_err(df_err)?;
        }
        register_views(&ctx, false).await?;
        Ok(Db {
            ctx,
            source: Source {
                snapshot_upto: manifest.upto_seq,
                files: manifest.files.len(),
                last_seq: manifest.upto_seq,
                tail_read: false,
                tail_note: Some("a cluster reads the committed snapshots only".into()),
            },
            data: data.to_path_buf(),
            opts,
            external: true,
        })
    }

    /// Opens every member of a catalogue as one set of tables: each
    /// table is the union of the members' tables with a first column
    /// `origin` (the member's name), from their committed files only. On a
    /// cluster's context (`cluster`), a member's table without files is a
    /// typed empty view, so that every plan serialises.
    async fn open_catalog(
        ctx: SessionContext,
        data: &Path,
        catalog: &Location,
        opts: OpenOptions,
        cluster: bool,
    ) -> Result<Db, QueryError> {
        let members = catalog.members().await?;
        if members.is_empty() {
            return Err(QueryError::Sql(format!(
                "the catalogue {catalog} has no member: no directory right under it holds a manifest.json; ship a data directory's snapshots to {catalog}NAME/ with 'fathom --snapshots {catalog}NAME snapshot'"
            )));
        }
        ctx.register_object_store(&catalog.store_url(), catalog.object_store());
        let mut source = Source {
            snapshot_upto: 0,
            files: 0,
            last_seq: 0,
            tail_read: false,
            tail_note: Some(format!(
                "a catalogue of {} member(s): committed snapshots only",
                members.len()
            )),
        };
        let default_catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| QueryError::Execution("the default catalogue is missing".into()))?;
        for (name, member) in &members {
            let manifest = member.manifest().await?.unwrap_or_default();
            source.files += manifest.files.len();
            source.snapshot_upto = source.snapshot_upto.max(manifest.upto_seq);
            let schema = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
            default_catalog.register_schema(name, schema.clone()).map_err(df_err)?;
            for info in tables::all() {
                if cluster && manifest.files_of(info.name).next().is_none() {
                    register_empty(&ctx, &format!("\"{}\".{}", name.replace('"', "\"\""), info.name), &info).await?;
                    continue;
                }
                let provider = table_provider(&Files::Remote(member), &manifest, &info, None).await?;
                schema.register_table(info.name.to_string(), provider).map_err(df_err)?;
            }
        }
        source.last_seq = source.snapshot_upto;
        for info in tables::all() {
            let union: Vec<String> = members
                .iter()
                .map(|(name, _)| {
                    format!(
                        "SELECT '{}' AS origin, * FROM \"{}\".{}",
                        name.replace('\'', "''"),
                        name.replace('"', "\"\""),
                        info.name
                    )
                })
                .collect();
            ctx.sql(&format!("CREATE VIEW {} AS {}", info.name, union.join(" UNION ALL ")))
                .await
                .map_err(df_err)?;
        }
        register_views(&ctx, true).await?;
        Ok(Db {
            ctx,
            source,
            data: data.to_path_buf(),
            opts,
            external: cluster,
        })
    }

    /// Where the rows come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The DataFusion context (tables and views registered).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one read-only statement and collects its result. A snapshot
    /// file compacted away between opening and reading makes the query
    /// reopen the tables and try again (up to three times).
    pub async fn sql(&mut self, query: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let mut tries = 0;
        loop {
            match self.sql_once(query).await {
                Err(QueryError::Execution(msg)) if tries < 3 && is_missing_file(&msg) && !self.external => {
                    tries += 1;
                    *self = Db::open(&self.data, self.opts.clone()).await?;
                }
                other => return other,
            }
        }
    }

    /// Runs one read-only statement through a shared session (no reopen
    /// and retry: callers that hold a `Db` for many readers reopen it
    /// themselves when [`QueryError::is_stale`] says a file went away).
    pub async fn query(&self, query: &str) -> Result<Vec<RecordBatch>, QueryError> {
        self.sql_once(query).await
    }

    /// [`Db::query`] returning at most `max_rows` rows: the limit is part of
    /// the plan, so a statement of millions of rows is never materialised
    /// (a reader that shows or sends a bounded result uses this).
    pub async fn query_limited(&self, query: &str, max_rows: usize) -> Result<Vec<RecordBatch>, QueryError> {
        self.plan(query)
            .await?
            .limit(0, Some(max_rows))
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)
    }

    /// Plans one statement under the read-only rules.
    async fn plan(&self, query: &str) -> Result<datafusion::dataframe::DataFrame, QueryError> {
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.ctx
            .sql_with_options(query, read_only)
            .await
            .map_err(|e| explain_error(e, query))
    }

    async fn sql_once(&self, query: &str) -> Result<Vec<RecordBatch>, QueryError> {
        self.plan(query).await?.collect().await.map_err(df_err)
    }

    /// The schema a query would produce, without running it.
    pub async fn schema_of(&self, query: &str) -> Result<SchemaRef, QueryError> {
        Ok(Arc::new(self.plan(query).await?.schema().as_arrow().clone()))
    }
}

fn is_missing_file(msg: &str) -> bool {
    msg.contains("No such file") || msg.contains("not found") && msg.contains(".parquet")
}

/// Reads the log's events after the manifest into in-memory batches, or
/// `None` when there is no log.
/// Batches per table.
type TableBatches = Vec<(&'static str, RecordBatch)>;

fn read_tail(data: &Path, manifest: &Manifest) -> Result<Option<(u64, TableBatches)>, fathom_store::Error> {
    if !data.join("log").exists() {
        return Ok(None);
    }
    let store = Store::open_shared(
        data,
        Options {
            // A reader needs little cache.
            cache_bytes: 64 << 20,
            ..Options::default()
        },
    )?;
    let last = store.last_seq().0;
    let mut projector = Projector::new(&manifest.carry);
    if last > manifest.upto_seq {
        for rec in store.range(fathom_core::Seq(manifest.upto_seq + 1)..=fathom_core::Seq(last)) {
            projector.push(&rec?);
        }
    }
    Ok(Some((last, projector.take_batches())))
}

/// Registers `name` (possibly schema-qualified) as a typed relation with
/// no rows and no files: unlike an empty in-memory table, it serialises
/// into a cluster's plans.
async fn register_empty(ctx: &SessionContext, name: &str, info: &TableInfo) -> Result<(), QueryError> {
    let columns: Vec<String> = info
        .schema
        .fields()
        .iter()
        .map(|f| format!("arrow_cast(NULL, '{}') AS \"{}\"", f.data_type(), f.name()))
        .collect();
    ctx.sql(&format!(
        "CREATE VIEW {name} AS SELECT {} WHERE false",
        columns.join(", ")
    ))
    .await
    .map_err(df_err)?;
    Ok(())
}

/// Creates the views on `ctx` (for a catalogue's tables when `catalogue`).
async fn register_views(ctx: &SessionContext, catalogue: bool) -> Result<(), QueryError> {
    for (name, _, body) in VIEWS {
        ctx.sql(&format!("CREATE VIEW {name} AS {}", view_sql(body, catalogue)))
            .await
            .map_err(df_err)?;
    }
    Ok(())
}

/// The remote manifest at `loc`, or an error saying how to ship one.
async fn remote_manifest(loc: &Location) -> Result<Manifest, QueryError> {
    loc.manifest().await?.ok_or_else(|| {
        QueryError::Sql(format!(
            "no snapshots have been shipped to {loc} (it holds no manifest.json); ship them with 'fathom --snapshots {loc} snapshot', or check the URL and the AWS_* / GOOGLE_* / AZURE_* settings"
        ))
    })
}

/// An object store registry that opens S3, GCS and Azure stores on first
/// use from the URL and the environment (for a cluster's executors, which
/// meet snapshot URLs only in the plans they are sent).
#[derive(Debug, Default)]
pub struct LocationStores {
    inner: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl datafusion::execution::object_store::ObjectStoreRegistry for LocationStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        match self.inner.get_store(url) {
            Ok(store) => Ok(store),
            Err(_) if matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure") => {
                let loc = Location::parse(url.as_str()).map_err(|l| DataFusionError::External(Box::new(l)))?;
                let store = loc.object_store();
                self.inner.register_store(&loc.store_url(), store.clone());
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }
}

/// The settings fathom's SQL sessions use (also a cluster client's).
pub fn session_config(opts: &OpenOptions) -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    // Evaluate filters while decoding Parquet (late materialisation):
    // a query for one episode's turns reads the text of its rows only.
    config.options_mut().execution.parquet.pushdown_filters = true;
    config.options_mut().execution.parquet.reorder_filters = true;
    if opts.target_partitions > 0 {
        config = config.with_target_partitions(opts.target_partitions);
    }
    config
}

async fn table_provider(
    files: &Files<'_>,
    manifest: &Manifest,
    info: &TableInfo,
    tail: Option<&[(&'static str, RecordBatch)]>,
) -> Result<Arc<dyn TableProvider>, QueryError> {
    let mut parts: Vec<Arc<dyn TableProvider>> = Vec::new();
    let tail_batch = tail.and_then(|t| t.iter().find(|(name, _)| *name == info.name).map(|(_, b)| b.clone()));
    // `runs` is complete in the tail (the projector carries every run), so
    // its snapshot file is only read when the tail is not.
    let use_files = !(info.name == "runs" && tail.is_some());
    let urls: Vec<ListingTableUrl> = if use_files {
        manifest
            .files_of(info.name)
            .map(|f| files.url(f))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    if !urls.is_empty() {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(info.schema.clone());
        parts.push(Arc::new(ListingTable::try_new(config).map_err(df_err)?));
    }
    if let Some(b) = tail_batch {
        parts.push(Arc::new(
            MemTable::try_new(info.schema.clone(), vec![vec![b]]).map_err(df_err)?,
        ));
    }
    if parts.is_empty() {
        parts.push(Arc::new(
            MemTable::try_new(info.schema.clone(), vec![vec![]]).map_err(df_err)?,
        ));
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Ok(Arc::new(Unioned {
        schema: info.schema.clone(),
        parts,
    }))
}

/// Rewords DataFusion's planning errors for the prompt: what was wrong and
/// what to do.
fn explain_error(e: DataFusionError, query: &str) -> QueryError {
    let msg = e.strip_backtrace();
    let tables: Vec<&str> = tables::all()
        .iter()
        .map(|t| t.name)
        .chain(VIEWS.iter().map(|v| v.0))
        .collect();
    if msg.contains("DDL not supported") || msg.contains("DML not supported") || msg.contains("Statement not supported")
    {
        return QueryError::ReadOnly(format!(
            "fathom's SQL is read-only: only queries (SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE) are allowed; '{}' would change something. ({msg})",
            query.split_whitespace().next().unwrap_or("")
        ));
    }
    if msg.contains("table") && msg.contains("not found") {
        return QueryError::Sql(format!("{msg}. Tables: {}", tables.join(", ")));
    }
    if let Some(rest) = msg.strip_prefix("Schema error: ") {
        return QueryError::Sql(rest.to_string());
    }
    QueryError::Sql(msg.strip_prefix("Error during planning: ").unwrap_or(&msg).to_string())
}

/// Every table and view with its one-line description.
pub fn catalogue() -> Vec<(String, String)> {
    tables::all()
        .iter()
        .map(|t| (t.name.to_string(), t.doc.to_string()))
        .chain(VIEWS.iter().map(|(n, d, _)| (n.to_string(), d.to_string())))
        .collect()
}

pub mod format;
