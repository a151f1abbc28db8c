//! `tclab run --shard i/n`: split the kernel × lockdown cells of a run
//! between n CI jobs so that every cell runs in exactly one of them.
//!
//! The unit is the cell (one boot runs all its scenarios: splitting a cell's
//! scenarios would pay its boot twice). Cells are put in a canonical order
//! (host first, kernels by version, lockdown modes by strictness) and dealt
//! round-robin: shard i gets positions i-1, i-1+n, … The order does not
//! depend on how `--kernel`/`--lockdown` were spelled, so n jobs given the
//! same selection agree, and shard sizes differ by at most one.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::guest::LockdownMode;

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// A `--shard` value that is not `i/n` with 1 ≤ i ≤ n.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {given:?}: {why} (expected i/n with 1 <= i <= n, e.g. 2/3)")]
pub struct ShardError {
    given: String,
    why: &'static str,
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let err = |why| ShardError { given: s.to_string(), why };
        let (i, n) = s.split_once('/').ok_or_else(|| err("no '/'"))?;
        let index: usize = i.trim().parse().map_err(|_| err("i is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| err("n is not a number"))?;
        if count == 0 {
            return Err(err("n is 0"));
        }
        if index == 0 || index > count {
            return Err(err("i is out of range"));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One unit of work: a QEMU cell, or the host kernel (`lockdown: None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unit {
    pub kernel: String,
    pub lockdown: Option<LockdownMode>,
}

impl Unit {
    pub fn host() -> Unit {
        Unit { kernel: "host".into(), lockdown: None }
    }

    pub fn cell(kernel: &str, lockdown: LockdownMode) -> Unit {
        Unit { kernel: kernel.to_string(), lockdown: Some(lockdown) }
    }

    pub fn is_host(&self) -> bool {
        self.lockdown.is_none()
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lockdown {
            Some(l) => write!(f, "{}/{l}", self.kernel),
            None => f.write_str(&self.kernel),
        }
    }
}

/// Canonical order: host, then kernels by version ("5.10" < "6.1" < "6.12";
/// names that are not versions after those, by name), then lockdown mode.
pub fn canonical_order(a: &Unit, b: &Unit) -> Ordering {
    let kernel_key = |u: &Unit| (!u.is_host(), version_key(&u.kernel), u.kernel.clone());
    kernel_key(a).cmp(&kernel_key(b)).then(a.lockdown.cmp(&b.lockdown))
}

/// "6.12" → [6, 12]; a name with a non-numeric part sorts after every version.
fn version_key(name: &str) -> (bool, Vec<u64>) {
    let parts: Option<Vec<u64>> = name.split('.').map(|p| p.parse().ok()).collect();
    match parts {
        Some(v) => (false, v),
        None => (true, Vec::new()),
    }
}

impl Shard {
    /// The units of `all` this shard runs, in canonical order. Duplicates
    /// count once.
    pub fn select(&self, all: &[Unit]) -> Vec<Unit> {
        let mut units = all.to_vec();
        units.sort_by(canonical_order);
        units.dedup();
        units.into_iter().enumerate().filter(|(pos, _)| pos % self.count == self.index - 1).map(|(_, u)| u).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(kernels: &[&str]) -> Vec<Unit> {
        let mut units = Vec::new();
        for k in kernels {
            for l in LockdownMode::ALL {
                units.push(Unit::cell(k, l));
            }
        }
        units
    }

    #[test]
    fn parses_i_of_n_and_rejects_the_rest_with_the_reason() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!("1/1".parse::<Shard>(), Ok(Shard { index: 1, count: 1 }));
        assert_eq!(Shard { index: 2, count: 3 }.to_string(), "2/3");
        for (bad, why) in [("0/3", "out of range"), ("4/3", "out of range"), ("1/0", "n is 0"), ("3", "no '/'"), ("a/3", "i is not")] {
            let e = bad.parse::<Shard>().expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn every_unit_lands_in_exactly_one_shard_for_every_shard_count() {
        let mut all = matrix(&["5.10", "6.1", "6.12", "6.6", "5.15"]);
        all.push(Unit::host());
        for count in 1..=all.len() + 2 {
            let mut seen: Vec<Unit> = Vec::new();
            let mut sizes = Vec::new();
            for index in 1..=count {
                let picked = Shard { index, count }.select(&all);
                sizes.push(picked.len());
                seen.extend(picked);
            }
            assert_eq!(seen.len(), all.len(), "n={count}: a unit ran twice or never");
            for u in &all {
                assert_eq!(seen.iter().filter(|s| *s == u).count(), 1, "n={count}: {u}");
            }
            let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
            assert!(max - min <= 1, "n={count}: unbalanced {sizes:?}");
        }
    }

    #[test]
    fn assignment_does_not_depend_on_the_order_units_are_given() {
        let all = matrix(&["5.10", "6.1", "6.12"]);
        let mut reversed = all.clone();
        reversed.reverse();
        let mut rotated = all.clone();
        rotated.rotate_left(4);
        for index in 1..=3 {
            let shard = Shard { index, count: 3 };
            assert_eq!(shard.select(&all), shard.select(&reversed));
            assert_eq!(shard.select(&all), shard.select(&rotated));
        }
    }

    #[test]
    fn assignment_is_the_documented_round_robin_over_the_canonical_order() {
        // Pinned: a change here reshuffles which CI job runs which cell.
        let mut all = matrix(&["6.12", "5.10", "6.1"]);
        all.push(Unit::host());
        let names = |index| Shard { index, count: 3 }.select(&all).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names(1), ["host", "5.10/confidentiality", "6.1/confidentiality", "6.12/confidentiality"]);
        assert_eq!(names(2), ["5.10/none", "6.1/none", "6.12/none"]);
        assert_eq!(names(3), ["5.10/integrity", "6.1/integrity", "6.12/integrity"]);
    }

    #[test]
    fn kernels_sort_by_version_not_by_text() {
        let mut units = [Unit::cell("6.12", LockdownMode::None), Unit::cell("custom", LockdownMode::None), Unit::cell("6.1", LockdownMode::None), Unit::cell("5.10", LockdownMode::None), Unit::host()];
        units.sort_by(canonical_order);
        let names: Vec<String> = units.iter().map(|u| u.kernel.clone()).collect();
        assert_eq!(names, ["host", "5.10", "6.1", "6.12", "custom"]);
    }
}
