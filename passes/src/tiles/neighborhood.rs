//! Exact tile classification for NATTEN neighborhood masks.
//!
//! A flat index range `lo..=hi` over a row-major grid is a union of at most
//! `2n - 1` *boxes* (products of per-axis coordinate intervals): a partial
//! first row, a block of whole rows, a partial last row, recursively. For a
//! query box `A = A_1 × … × A_n` and a key box `B = B_1 × … × B_n` the pairs
//! `A × B` are the product of the per-axis pairs `A_i × B_i`, and
//! visibility is the conjunction of per-axis visibility, so:
//!
//! * `A × B` has a visible pair iff *every* axis has one in `A_i × B_i`;
//! * every pair of `A × B` is visible iff every pair of every `A_i × B_i` is.
//!
//! A tile is the union of its box pairs (at most 5 × 5 in 3-D), which gives
//! the exact class. Per axis, with dilation `d`, each dilation group present
//! in both `A_i` and `B_i` is an interval of group positions `i ∈ [i0, i1]`
//! for queries and `j ∈ [j0, j1]` for keys; the windows
//! `[start(i), end(i)]` have non-decreasing ends that move by at most one
//! step, so their union over `[i0, i1]` is the interval
//! `[start(i0), end(i1)]`, and a visible pair exists iff it meets `[j0, j1]`.
//! That is `O(min(d, |A_i|))` per axis. All pairs are visible only if one
//! group is involved (`d = 1`, or a single query and key coordinate) and
//! `B_i ⊆ [start(max A_i), end(min A_i)]`.

/// One axis of a neighborhood mask (validated: `len ≥ 1`, odd `kernel ≥ 1`,
/// `dilation ≥ 1`, every group has at least `kernel` members).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NaAxis {
    pub len: i64,
    pub kernel: i64,
    pub dilation: i64,
    pub causal: bool,
}

/// An inclusive interval.
pub(crate) type Iv = (i64, i64);

impl NaAxis {
    /// NATTEN's rule (as the reference writes it).
    pub fn visible(&self, a: i64, b: i64) -> bool {
        let d = self.dilation;
        let g = a % d;
        if b % d != g {
            return false;
        }
        let (i, j) = (a / d, b / d);
        self.start(i, g) <= j && j <= self.end(i, g)
    }

    fn start(&self, i: i64, g: i64) -> i64 {
        let kk = self.kernel;
        if self.causal {
            (i - kk + 1).max(0)
        } else {
            let lg = (self.len - g + self.dilation - 1) / self.dilation;
            (i - kk / 2).max(0).min(lg - kk)
        }
    }

    fn end(&self, i: i64, g: i64) -> i64 {
        if self.causal {
            i
        } else {
            self.start(i, g) + self.kernel - 1
        }
    }

    /// Whether some pair of `a × b` is visible.
    pub fn any(&self, a: Iv, b: Iv) -> bool {
        let d = self.dilation;
        let n = (a.1 - a.0 + 1).min(d);
        for t in 0..n {
            let x = a.0 + t; // the first query coordinate of its group
            let g = x % d;
            let bf = b.0 + (g - b.0 % d).rem_euclid(d);
            if bf > b.1 {
                continue;
            }
            let bl = b.1 - (b.1 - g).rem_euclid(d);
            let al = a.1 - (a.1 - g).rem_euclid(d);
            let (i0, i1, j0, j1) = (x / d, al / d, bf / d, bl / d);
            if self.start(i0, g) <= j1 && j0 <= self.end(i1, g) {
                return true;
            }
        }
        false
    }

    /// Whether every pair of `a × b` is visible.
    pub fn all(&self, a: Iv, b: Iv) -> bool {
        if self.dilation > 1 {
            // Two consecutive coordinates are in different groups.
            return a.0 == a.1 && b.0 == b.1 && self.visible(a.0, b.0);
        }
        self.start(a.1, 0) <= b.0 && b.1 <= self.end(a.0, 0)
    }
}

/// The boxes (one interval per axis) whose union is the flat range
/// `lo..=hi` of a row-major grid with axis sizes `dims`.
pub(crate) fn boxes(lo: i64, hi: i64, dims: &[i64], out: &mut Vec<Vec<Iv>>) {
    let mut prefix = Vec::with_capacity(dims.len());
    rec(lo, hi, dims, &mut prefix, out);
}

fn rec(lo: i64, hi: i64, dims: &[i64], prefix: &mut Vec<Iv>, out: &mut Vec<Vec<Iv>>) {
    if dims.len() == 1 {
        let mut b = prefix.clone();
        b.push((lo, hi));
        out.push(b);
        return;
    }
    let rest = &dims[1..];
    let inner: i64 = rest.iter().product();
    let (r0, r1, l, h) = (lo / inner, hi / inner, lo % inner, hi % inner);
    let sub = |r: Iv, lo: i64, hi: i64, prefix: &mut Vec<Iv>, out: &mut Vec<Vec<Iv>>| {
        prefix.push(r);
        rec(lo, hi, rest, prefix, out);
        prefix.pop();
    };
    if r0 == r1 {
        sub((r0, r0), l, h, prefix, out);
        return;
    }
    let (mut f0, mut f1) = (r0, r1);
    if l != 0 {
        sub((r0, r0), l, inner - 1, prefix, out);
        f0 = r0 + 1;
    }
    if h != inner - 1 {
        f1 = r1 - 1;
    }
    if f0 <= f1 {
        let mut b = prefix.clone();
        b.push((f0, f1));
        b.extend(rest.iter().map(|&g| (0, g - 1)));
        out.push(b);
    }
    if h != inner - 1 {
        sub((r1, r1), 0, h, prefix, out);
    }
}

/// Exact `(any visible, all visible)` for the flat query range `q` and key
/// range `k` (both non-empty, inside the grid).
pub(crate) fn classify(axes: &[NaAxis], dims: &[i64], q: Iv, k: Iv) -> (bool, bool) {
    let (mut qb, mut kb) = (Vec::new(), Vec::new());
    boxes(q.0, q.1, dims, &mut qb);
    boxes(k.0, k.1, dims, &mut kb);
    let (mut any, mut all) = (false, true);
    for a in &qb {
        for b in &kb {
            let mut pair_any = true;
            let mut pair_all = true;
            for (ax, axis) in axes.iter().enumerate() {
                if !axis.any(a[ax], b[ax]) {
                    pair_any = false;
                    break;
                }
                pair_all &= axis.all(a[ax], b[ax]);
            }
            any |= pair_any;
            all &= pair_any && pair_all;
            if any && !all {
                return (true, false);
            }
        }
    }
    (any, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_cover_the_range_exactly() {
        for dims in [vec![7i64], vec![3, 5], vec![2, 3, 4], vec![4, 1, 3]] {
            let n: i64 = dims.iter().product();
            for lo in 0..n {
                for hi in lo..n {
                    let mut out = Vec::new();
                    boxes(lo, hi, &dims, &mut out);
                    assert!(out.len() < 2 * dims.len());
                    let mut seen = vec![0; n as usize];
                    for b in &out {
                        // Enumerate the box in row-major order.
                        let mut idx: Vec<i64> = b.iter().map(|r| r.0).collect();
                        'outer: loop {
                            let flat = idx.iter().zip(&dims).fold(0, |acc, (i, g)| acc * g + i);
                            seen[flat as usize] += 1;
                            let mut a = idx.len();
                            loop {
                                if a == 0 {
                                    break 'outer;
                                }
                                a -= 1;
                                if idx[a] < b[a].1 {
                                    idx[a] += 1;
                                    break;
                                }
                                idx[a] = b[a].0;
                            }
                        }
                    }
                    for (f, &c) in seen.iter().enumerate() {
                        let inside = (lo..=hi).contains(&(f as i64));
                        assert_eq!(c, inside as i32, "dims {dims:?} {lo}..={hi} at {f}");
                    }
                }
            }
        }
    }

    #[test]
    fn axis_any_and_all_are_exact() {
        for len in 1..14 {
            for kernel in [1, 3, 5] {
                for dilation in 1..5 {
                    let smallest = if dilation > len { 1 } else { len / dilation };
                    if smallest < kernel {
                        continue;
                    }
                    for causal in [false, true] {
                        let ax = NaAxis { len, kernel, dilation, causal };
                        for a0 in 0..len {
                            for a1 in a0..len {
                                for b0 in 0..len {
                                    for b1 in b0..len {
                                        let mut any = false;
                                        let mut all = true;
                                        for a in a0..=a1 {
                                            for b in b0..=b1 {
                                                let v = ax.visible(a, b);
                                                any |= v;
                                                all &= v;
                                            }
                                        }
                                        assert_eq!(ax.any((a0, a1), (b0, b1)), any, "{ax:?} {a0}..{a1} {b0}..{b1}");
                                        assert_eq!(ax.all((a0, a1), (b0, b1)), all, "{ax:?} {a0}..{a1} {b0}..{b1}");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
