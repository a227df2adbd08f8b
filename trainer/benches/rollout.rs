//! Run with: `cargo bench -p fathom-trainer --bench rollout`
//!
//! Scripted episodes per second on the sandbox with logging on (every step
//! an event, the gateway recording every exchange, the episode's end made
//! durable) against logging off (the same episodes, nothing recorded), in
//! the same process. Target: logging costs under 5%.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fathom_core::{QuestionId, RunId, SystemClock};
use fathom_replay::{Gateway, GatewayConfig};
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};
use fathom_store::{Options, Store};
use fathom_trainer::rollout::{EpisodeSpec, Rollout, RolloutConfig};
use fathom_trainer::scripted::ScriptedPolicy;
use fathom_trainer::tools::HeuristicReader;

const EPISODES: usize = 20;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let web = Arc::new(SandboxWeb::generate(3, 1000).unwrap());
    let sb = rt
        .block_on(Sandbox::start(web.clone(), ServeConfig::default()))
        .unwrap();
    let addrs = sb.addresses();
    let config = GatewayConfig::sandbox(sb.search_url(), addrs);
    let specs: Vec<EpisodeSpec> = fathom_sandbox::questions::generate(&web.world, 3, EPISODES, 1..=4)
        .into_iter()
        .enumerate()
        .map(|(i, q)| EpisodeSpec {
            question_id: QuestionId(q.id),
            question: q.text,
            ground_truths: q.answers,
            step: 0,
            group_id: i as u32,
            group_index: 0,
            seed: i as u64,
            replay_of: None,
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let clock = Arc::new(SystemClock);
    let logged = Rollout::new(
        store.clone(),
        Arc::new(Gateway::record(config.clone(), store.clone(), clock.clone()).unwrap()),
        clock.clone(),
        RunId(1),
        RolloutConfig::default(),
    );
    let unlogged = Rollout::unlogged(
        Arc::new(Gateway::live(config, clock.clone()).unwrap()),
        clock,
        RunId(2),
        RolloutConfig::default(),
    );

    let mut g = c.benchmark_group("rollout");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(EPISODES as u64));
    for (name, rollout) in [("logging-on", &logged), ("logging-off", &unlogged)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    for spec in &specs {
                        let out = rollout
                            .episode(&mut ScriptedPolicy::new(), &mut HeuristicReader, spec)
                            .await
                            .unwrap();
                        assert!(out.score.format_ok);
                    }
                });
                // A training step ends durable: one flush per 20 episodes.
                store.flush().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
