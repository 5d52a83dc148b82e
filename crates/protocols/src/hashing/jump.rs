//! Jump consistent hash (Lamping & Veach 2014).

/// The bucket in `0..buckets` for `key`. When `buckets` grows by one, a key either stays or
/// moves to the new last bucket, and each bucket gets 1/buckets of the keys in expectation.
///
/// Returns 0 when `buckets` is 0 (there is nowhere else to put it); callers check.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    // The paper's loop: b is the last bucket the key jumped to, j the next jump target,
    // drawn from a linear congruential generator seeded by the key.
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / r)) as i64;
    }
    b.max(0) as u32
}
