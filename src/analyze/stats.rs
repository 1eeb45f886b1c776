//! The measures of a candidate: how it splits positives from negatives.
//!
//! A yes/no candidate (an event, a page, a trait change: did the account
//! show it in its lookback window?) is a 2x2 table: `a` positives and `b`
//! negatives showed it, out of `pos` and `neg`. A number (a metric) is
//! turned into one at the threshold that best separates the groups
//! (Youden's J), and also gets its point-biserial correlation.

/// z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// How a yes/no candidate splits the accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Split {
    /// Positives that showed it.
    pub a: u64,
    /// Negatives that showed it.
    pub b: u64,
    /// All positives, all negatives.
    pub pos: u64,
    pub neg: u64,
}

impl Split {
    /// Accounts that showed it.
    pub fn support(&self) -> u64 {
        self.a + self.b
    }

    /// Share of those who showed it that are positive.
    pub fn precision(&self) -> f64 {
        ratio(self.a, self.a + self.b)
    }

    /// Share of positives that showed it.
    pub fn recall(&self) -> f64 {
        ratio(self.a, self.pos)
    }

    /// Share of negatives that showed it.
    pub fn negative_share(&self) -> f64 {
        ratio(self.b, self.neg)
    }

    /// Share of all accounts that are positive.
    pub fn base_rate(&self) -> f64 {
        ratio(self.pos, self.pos + self.neg)
    }

    /// Precision over the base rate: how much likelier an account that
    /// showed it is positive than any account.
    pub fn lift(&self) -> f64 {
        let base = self.base_rate();
        if base == 0.0 {
            0.0
        } else {
            self.precision() / base
        }
    }

    /// The lower bound of the 95% Wilson score interval of the precision:
    /// what the precision is at least, given how few accounts may show it.
    /// The ranking measure.
    pub fn precision_low(&self) -> f64 {
        wilson_lower(self.a, self.a + self.b, Z95)
    }

    /// [`Split::precision_low`] over the base rate.
    pub fn lift_low(&self) -> f64 {
        let base = self.base_rate();
        if base == 0.0 {
            0.0
        } else {
            self.precision_low() / base
        }
    }

    /// The harmonic mean of the recall and of [`Split::precision_low`]:
    /// one number that a signal only raises by reaching more positives
    /// without bringing in too many negatives. What the suggested signal
    /// maximises.
    pub fn f1_low(&self) -> f64 {
        let (p, r) = (self.precision_low(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// The phi coefficient (Pearson correlation of two yes/no variables):
    /// -1..=1, 0 when showing it says nothing.
    pub fn phi(&self) -> f64 {
        let (a, b) = (self.a as f64, self.b as f64);
        let c = self.pos.saturating_sub(self.a) as f64;
        let d = self.neg.saturating_sub(self.b) as f64;
        let den = ((a + b) * (c + d) * (a + c) * (b + d)).sqrt();
        if den == 0.0 {
            0.0
        } else {
            (a * d - b * c) / den
        }
    }
}

fn ratio(x: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x as f64 / n as f64
    }
}

/// Lower bound of the Wilson score interval for `k` successes in `n`
/// trials (0 when `n` is 0).
pub fn wilson_lower(k: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

/// Which side of a threshold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `value >= threshold`.
    AtLeast,
    /// `value <= threshold`.
    AtMost,
}

impl Direction {
    pub fn symbol(self) -> &'static str {
        match self {
            Direction::AtLeast => ">=",
            Direction::AtMost => "<=",
        }
    }
}

/// A number's best threshold and what it splits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub value: f64,
    pub direction: Direction,
    /// Youden's J: share of positives past it minus share of negatives.
    pub j: f64,
    pub split: Split,
}

/// The threshold of `pos`/`neg` values that maximises Youden's J (true
/// positive rate minus false positive rate), over every observed value and
/// both directions; among equal J, the higher precision, then `>=`, then
/// the higher value. `None` without values.
pub fn best_threshold(pos: &[f64], neg: &[f64]) -> Option<Threshold> {
    if pos.is_empty() && neg.is_empty() {
        return None;
    }
    let (np, nn) = (pos.len() as u64, neg.len() as u64);
    let mut all: Vec<(f64, bool)> = pos.iter().map(|&v| (v, true)).chain(neg.iter().map(|&v| (v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut best: Option<Threshold> = None;
    let mut consider = |t: Threshold| {
        let better = match &best {
            None => true,
            Some(b) => {
                let key = |x: &Threshold| (x.j, x.split.precision(), x.direction == Direction::AtLeast, x.value);
                let (kt, kb) = (key(&t), key(b));
                kt.partial_cmp(&kb) == Some(std::cmp::Ordering::Greater)
            }
        };
        if better {
            best = Some(t);
        }
    };
    // `>= v`: everything from the first occurrence of v upwards.
    let (mut a, mut b) = (0u64, 0u64);
    let mut i = all.len();
    while i > 0 {
        let v = all[i - 1].0;
        while i > 0 && all[i - 1].0 == v {
            if all[i - 1].1 {
                a += 1;
            } else {
                b += 1;
            }
            i -= 1;
        }
        let split = Split { a, b, pos: np, neg: nn };
        consider(Threshold {
            value: v,
            direction: Direction::AtLeast,
            j: split.recall() - split.negative_share(),
            split,
        });
    }
    // `<= v`.
    let (mut a, mut b) = (0u64, 0u64);
    let mut i = 0;
    while i < all.len() {
        let v = all[i].0;
        while i < all.len() && all[i].0 == v {
            if all[i].1 {
                a += 1;
            } else {
                b += 1;
            }
            i += 1;
        }
        let split = Split { a, b, pos: np, neg: nn };
        consider(Threshold {
            value: v,
            direction: Direction::AtMost,
            j: split.recall() - split.negative_share(),
            split,
        });
    }
    best
}

/// The point-biserial correlation of a number with being positive: the
/// Pearson correlation of the values with a 0/1 label. 0 when either group
/// is empty or every value is the same.
pub fn point_biserial(pos: &[f64], neg: &[f64]) -> f64 {
    let (n1, n0) = (pos.len() as f64, neg.len() as f64);
    if n1 == 0.0 || n0 == 0.0 {
        return 0.0;
    }
    let n = n1 + n0;
    let m1 = pos.iter().sum::<f64>() / n1;
    let m0 = neg.iter().sum::<f64>() / n0;
    let mean = (m1 * n1 + m0 * n0) / n;
    let var = pos.iter().chain(neg).map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    if var <= 0.0 {
        return 0.0;
    }
    (m1 - m0) / var.sqrt() * (n1 / n * n0 / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn split_measures_by_hand() {
        // 10 positives, 90 negatives; 8 positives and 2 negatives showed it.
        let s = Split { a: 8, b: 2, pos: 10, neg: 90 };
        assert_eq!(s.support(), 10);
        assert!(close(s.precision(), 0.8) && close(s.recall(), 0.8) && close(s.negative_share(), 2.0 / 90.0));
        assert!(close(s.lift(), 8.0));
        // phi = (8*88 - 2*2) / sqrt(10*90*10*90) = 700/900.
        assert!(close(s.phi(), 700.0 / 900.0));
        // Wilson 95% for 8/10: 0.4902 (textbook value).
        assert!(close(s.precision_low(), 0.4902), "{}", s.precision_low());
        assert!(close(s.lift_low(), s.precision_low() / 0.1));
        assert!(close(s.f1_low(), 2.0 * 0.4902 * 0.8 / (0.4902 + 0.8)));
        // Nothing shown: zeros, no NaN.
        let z = Split { a: 0, b: 0, pos: 10, neg: 90 };
        assert_eq!((z.precision(), z.precision_low(), z.phi(), z.lift()), (0.0, 0.0, 0.0, 0.0));
        assert_eq!((Split::default().lift_low(), Split::default().f1_low()), (0.0, 0.0));
    }

    #[test]
    fn rare_candidates_rank_below_supported_ones() {
        // 3 of 3 is 100% but proves less than 40 of 50.
        let rare = Split { a: 3, b: 0, pos: 50, neg: 950 };
        let common = Split { a: 40, b: 10, pos: 50, neg: 950 };
        assert!(rare.precision() > common.precision());
        assert!(rare.precision_low() < common.precision_low());
        assert!(close(wilson_lower(3, 3, Z95), 0.4385));
        assert_eq!(wilson_lower(0, 0, Z95), 0.0);
    }

    #[test]
    fn thresholds() {
        // Positives mostly 5+, negatives mostly below.
        let pos = [5.0, 6.0, 7.0, 2.0];
        let neg = [0.0, 1.0, 1.0, 2.0, 3.0, 5.0];
        let t = best_threshold(&pos, &neg).unwrap();
        assert_eq!((t.value, t.direction), (5.0, Direction::AtLeast));
        assert_eq!((t.split.a, t.split.b), (3, 1));
        assert!(close(t.j, 0.75 - 1.0 / 6.0));
        // The other way round: <=.
        let t = best_threshold(&[0.0, 1.0], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!((t.value, t.direction, t.split.a, t.split.b), (1.0, Direction::AtMost, 2, 0));
        // All the same: J = 0.
        let t = best_threshold(&[1.0, 1.0], &[1.0]).unwrap();
        assert_eq!((t.j, t.direction), (0.0, Direction::AtLeast));
        assert!(best_threshold(&[], &[]).is_none());
    }

    #[test]
    fn point_biserial_is_pearson_with_a_label() {
        let pos = [5.0, 6.0, 7.0, 2.0];
        let neg = [0.0, 1.0, 1.0, 2.0, 3.0, 5.0];
        // Pearson of (values, labels) computed the long way.
        let xs: Vec<f64> = pos.iter().chain(&neg).copied().collect();
        let ys: Vec<f64> = pos.iter().map(|_| 1.0).chain(neg.iter().map(|_| 0.0)).collect();
        let n = xs.len() as f64;
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>().sqrt();
        let sy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum::<f64>().sqrt();
        assert!(close(point_biserial(&pos, &neg), cov / (sx * sy)));
        assert_eq!(point_biserial(&[1.0], &[1.0, 1.0]), 0.0);
        assert_eq!(point_biserial(&[], &[1.0]), 0.0);
    }
}
