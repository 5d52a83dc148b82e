//! Least-significant-digit radix sort by a `u64` key (Knuth, TAOCP vol. 3, §5.2.5), for the
//! PageRank build's packed edge entries: one counting pass for all eight byte positions,
//! then one stable scatter per byte that is not the same in every key. Ids of a few
//! million nodes leave half the bytes constant, so about four passes sort what a
//! comparison sort needs some 23 rounds of comparisons for.

/// Sort `v` ascending by `key`, stably.
pub(crate) fn sort_by_u64<T: Copy + Default>(v: &mut Vec<T>, key: impl Fn(&T) -> u64) {
    // Below this a comparison sort wins: the counting tables alone are 16 KiB.
    if v.len() < 1 << 12 {
        v.sort_by_key(&key);
        return;
    }
    let mut counts = vec![[0usize; 256]; 8];
    for x in v.iter() {
        let k = key(x);
        for (b, c) in counts.iter_mut().enumerate() {
            c[((k >> (8 * b)) & 0xff) as usize] += 1;
        }
    }
    let mut other = vec![T::default(); v.len()];
    for (b, c) in counts.iter_mut().enumerate() {
        if c.contains(&v.len()) {
            // Every key has the same byte here: the order stands.
            continue;
        }
        let mut at = 0;
        for slot in c.iter_mut() {
            let n = *slot;
            *slot = at;
            at += n;
        }
        for x in v.iter() {
            let slot = &mut c[((key(x) >> (8 * b)) & 0xff) as usize];
            other[*slot] = *x;
            *slot += 1;
        }
        std::mem::swap(v, &mut other);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sorts_like_sort_unstable(
            mut v in proptest::collection::vec(any::<u64>(), 0..10_000),
            mask in any::<u64>(),
        ) {
            // Masked keys leave some bytes constant, which skips their passes.
            for x in v.iter_mut() {
                *x &= mask;
            }
            let mut want = v.clone();
            want.sort_unstable();
            super::sort_by_u64(&mut v, |&x| x);
            prop_assert_eq!(v, want);
        }

        #[test]
        fn is_stable(keys in proptest::collection::vec(0u64..16, 0..10_000)) {
            // Equal keys keep their input order (the second field).
            let mut v: Vec<(u64, usize)> = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
            let mut want = v.clone();
            want.sort_by_key(|&(k, _)| k);
            super::sort_by_u64(&mut v, |&(k, _)| k);
            prop_assert_eq!(v, want);
        }
    }

    #[test]
    fn sorts_past_the_comparison_sort_cutoff() {
        // A multiplicative scramble of 0..n: every byte varies, every pass runs.
        let n = 100_000u64;
        let mut v: Vec<u64> = (0..n)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        super::sort_by_u64(&mut v, |&x| x);
        assert_eq!(v, want);
    }
}
