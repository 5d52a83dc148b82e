//! Linearizability checking throughput on histories of a correct store.
//!
//! Run with `cargo bench -p synod-check --bench linearizability`. The headline case is a
//! 10,000-operation history over 50 keys from 8 concurrent clients, with some timed-out
//! (`Info`) and failed operations, as a simulator run produces.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use synod_check::history::History;
use synod_check::linearizability::{check_kv, CheckResult};
use synod_check::synthetic::{atomic_store_history, SyntheticConfig};

fn history(config: &SyntheticConfig) -> History {
    let history = atomic_store_history(config, 2024);
    // A benchmark of a checker that says no would measure the wrong thing.
    assert_eq!(check_kv(&history), CheckResult::Ok);
    history
}

fn linearizability(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_kv");

    let many_keys = history(&SyntheticConfig {
        operations: 10_000,
        keys: 50,
        clients: 8,
        info_percent: 1,
        fail_percent: 1,
        ..SyntheticConfig::default()
    });
    group.bench_function("10k_ops_50_keys_8_clients", |b| {
        b.iter(|| check_kv(black_box(&many_keys)))
    });

    // One hot key: every operation lands in the same sub-history, with eight
    // concurrent clients to order. Slow enough that fewer samples do.
    group.sample_size(10);
    let one_key = history(&SyntheticConfig {
        operations: 10_000,
        keys: 1,
        clients: 8,
        info_percent: 1,
        fail_percent: 1,
        ..SyntheticConfig::default()
    });
    group.bench_function("10k_ops_1_key_8_clients", |b| {
        b.iter(|| check_kv(black_box(&one_key)))
    });

    group.finish();
}

criterion_group!(benches, linearizability);
criterion_main!(benches);
