//! Throughput of the MVCC state machine, single-threaded: applying Puts (the work each
//! replica does per committed entry) and serving Ranges.
//!
//! Run with `cargo bench -p synod-protocols --bench mvcc`. Keys are 16 bytes and values
//! 256 bytes, as in etcd's published benchmark (8-byte keys there).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use synod_protocols::mvcc::{
    Compare, CompareResult, CompareTarget, MvccCommand, MvccStateMachine, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};

const BATCH: usize = 10_000;

fn key(i: usize) -> Vec<u8> {
    format!("/bench/key{i:07}").into_bytes()
}

fn put(i: usize) -> MvccCommand {
    MvccCommand::Put(PutRequest {
        key: key(i),
        value: vec![b'v'; 256],
        ..PutRequest::default()
    })
}

fn apply_all(sm: &mut MvccStateMachine, commands: &[MvccCommand]) {
    for (i, command) in commands.iter().enumerate() {
        let out = sm.apply_command(i as u64, command);
        debug_assert!(out.is_ok());
        black_box(out).ok();
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(BATCH as u64));

    let new_keys: Vec<MvccCommand> = (0..BATCH).map(put).collect();
    group.bench_function("put_10k_new_keys", |b| {
        b.iter_batched(
            MvccStateMachine::default,
            |mut sm| {
                apply_all(&mut sm, &new_keys);
                sm
            },
            BatchSize::LargeInput,
        )
    });

    // Overwrites of 1,000 keys into a store that already holds 100,000 versions.
    let overwrites: Vec<MvccCommand> = (0..BATCH).map(|i| put(i % 1000)).collect();
    let mut warm = MvccStateMachine::default();
    apply_all(
        &mut warm,
        &(0..100_000).map(|i| put(i % 1000)).collect::<Vec<_>>(),
    );
    group.bench_function("put_10k_overwrites_onto_100k_versions", |b| {
        b.iter_batched(
            || warm.clone(),
            |mut sm| {
                apply_all(&mut sm, &overwrites);
                sm
            },
            BatchSize::LargeInput,
        )
    });

    // Compare-and-set: a Txn on the mod revision, then a put.
    let cas: Vec<MvccCommand> = (0..BATCH)
        .map(|i| {
            MvccCommand::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Less,
                    target: CompareTarget::Mod(i64::MAX),
                    key: key(i % 1000),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: key(i % 1000),
                    value: vec![b'v'; 256],
                    ..PutRequest::default()
                })],
                failure: Vec::new(),
            })
        })
        .collect();
    group.bench_function("txn_cas_10k", |b| {
        b.iter_batched(
            MvccStateMachine::default,
            |mut sm| {
                apply_all(&mut sm, &cas);
                sm
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn range(c: &mut Criterion) {
    let mut sm = MvccStateMachine::default();
    apply_all(&mut sm, &(0..100_000).map(put).collect::<Vec<_>>());
    // A second version of every tenth key, so reads at a past revision have history.
    apply_all(
        &mut sm,
        &(0..100_000).step_by(10).map(put).collect::<Vec<_>>(),
    );
    let mut group = c.benchmark_group("range");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("one_key_of_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let req = RangeRequest {
                key: key(i),
                ..RangeRequest::default()
            };
            black_box(sm.range(black_box(&req)))
        })
    });
    group.bench_function("one_key_at_a_past_revision", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let req = RangeRequest {
                key: key(i),
                revision: 50_000,
                ..RangeRequest::default()
            };
            black_box(sm.range(black_box(&req)))
        })
    });
    // etcd counts every key in range before applying the limit, so a Range walks its
    // whole range: here 1,000 keys, returning 100.
    group.bench_function("range_of_1000_limit_100", |b| {
        b.iter(|| {
            i = (i + 7919) % 99_000;
            let req = RangeRequest {
                key: key(i),
                range_end: key(i + 1000),
                limit: 100,
                ..RangeRequest::default()
            };
            black_box(sm.range(black_box(&req)))
        })
    });
    group.finish();
}

criterion_group!(benches, apply, range);
criterion_main!(benches);
