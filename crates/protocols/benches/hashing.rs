//! Ring lookups per second: synod's binary-search ring against the chapter's linear scan
//! and the `hashring` crate, all with 100 nodes × 256 virtual nodes.
//!
//! `cargo bench -p synod-protocols --bench hashing`

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use synod_protocols::hashing::{hash_u64, jump_hash, rendezvous, Ring};

const NODES: u32 = 100;
const VNODES: u32 = 256;
const BATCH: usize = 4096;

/// The chapter's `get_node`: sort every point, then scan for the first at or after the key.
fn chapter_get_node(points: &[(u64, u32)], h: u64) -> u32 {
    let mut sorted: Vec<(u64, u32)> = points.to_vec();
    sorted.sort_unstable();
    for &(p, n) in &sorted {
        if p >= h {
            return n;
        }
    }
    sorted[0].1
}

/// The chapter's scan without its per-lookup sort: a linear scan of pre-sorted points.
fn linear_scan(sorted: &[(u64, u32)], h: u64) -> u32 {
    for &(p, n) in sorted {
        if p >= h {
            return n;
        }
    }
    sorted[0].1
}

#[derive(Hash, Clone, Copy, PartialEq, Eq, Debug)]
struct VNode {
    node: u32,
    replica: u32,
}

fn bench(c: &mut Criterion) {
    let ring = Ring::with_members(VNODES, 0..NODES);
    let points: Vec<(u64, u32)> = ring.points().map(|(p, &n)| (p, n)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let keys: Vec<u64> = (0..BATCH).map(|_| rng.gen()).collect();
    let hashes: Vec<u64> = keys.iter().map(|&k| hash_u64(k)).collect();

    let mut g = c.benchmark_group("ring_lookup_100x256");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("synod_ring_owner(hash)", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &h in &hashes {
                acc = acc.wrapping_add(*ring.owner(black_box(h)).unwrap_or(&0));
            }
            acc
        })
    });
    g.bench_function("synod_ring_owner(hash_u64(key))", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &k in &keys {
                acc = acc.wrapping_add(*ring.owner(hash_u64(black_box(k))).unwrap_or(&0));
            }
            acc
        })
    });
    g.bench_function("linear_scan_presorted", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &h in &hashes {
                acc = acc.wrapping_add(linear_scan(&points, black_box(h)));
            }
            acc
        })
    });
    let mut hr: hashring::HashRing<VNode> = hashring::HashRing::new();
    for node in 0..NODES {
        for replica in 0..VNODES {
            hr.add(VNode { node, replica });
        }
    }
    g.bench_function("hashring_crate_get(key)", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for k in &keys {
                acc = acc.wrapping_add(hr.get(black_box(k)).map_or(0, |v| v.node));
            }
            acc
        })
    });
    g.bench_function("jump_hash_100_buckets", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &k in &keys {
                acc = acc.wrapping_add(jump_hash(black_box(k), NODES));
            }
            acc
        })
    });
    let node_ids: Vec<u64> = (0..u64::from(NODES)).collect();
    g.bench_function("rendezvous_100_nodes", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &k in &keys {
                acc = acc.wrapping_add(rendezvous(black_box(k), &node_ids).unwrap_or(0));
            }
            acc
        })
    });
    g.finish();

    // The chapter's get_node as written sorts all 25,600 points on every call: measure it
    // one lookup at a time.
    let mut g = c.benchmark_group("chapter_get_node_100x256");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.bench_function("sort_then_scan", |b| {
        b.iter_batched(
            || rng.gen::<u64>(),
            |h| chapter_get_node(&points, h),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
