//! One HTTP call and what its outcome means (done, retry, give up), the
//! backoff between attempts, `Retry-After`, and the rate limit of a
//! destination.
//!
//! The rate limit is a small token bucket rather than the `governor` crate:
//! each destination has exactly one sender, which takes its turn in order,
//! so a keyed, lock-free limiter buys nothing here, and a plain bucket fed
//! with explicit instants is tested without sleeping.

use std::time::{Duration, Instant};

use rand::Rng;

/// How much of a response body is kept for logs and dead letters.
pub const BODY_KEEP: usize = 4096;

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// What happened, in words (never a URL: a Slack URL is a secret).
    pub detail: String,
    /// The response body (cut to [`BODY_KEEP`] bytes).
    pub body: String,
    /// `Retry-After`, when the response had one.
    pub retry_after: Option<Duration>,
    /// Worth trying again (429, 5xx, timeouts, connection errors, and
    /// 401/403, which are about credentials or limits, not the event).
    pub retryable: bool,
}

impl Failure {
    /// A failure of our own making (a response we cannot use): permanent.
    pub fn permanent(detail: impl Into<String>) -> Failure {
        Failure { status: None, detail: detail.into(), body: String::new(), retry_after: None, retryable: false }
    }

    /// A response the API gave but not in the shape it documents: it may
    /// be a proxy or a passing fault, so it is retried.
    pub fn unexpected(detail: impl Into<String>, status: u16, body: &str) -> Failure {
        Failure { status: Some(status), detail: detail.into(), body: cut(body), retry_after: None, retryable: true }
    }
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Whether a status is worth retrying.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 425 | 429) || status >= 500
}

fn cut(s: &str) -> String {
    if s.len() <= BODY_KEEP {
        return s.to_string();
    }
    let mut end = BODY_KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Sends a request: a 2xx is a [`Response`], anything else a [`Failure`]
/// that says whether to retry.
pub async fn call(req: reqwest::RequestBuilder) -> Result<Response, Failure> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Err(transport(e)),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => return Err(transport(e)),
    };
    if (200..300).contains(&status) {
        return Ok(Response { status, body });
    }
    Err(Failure {
        status: Some(status),
        detail: format!("HTTP {status}"),
        body: cut(&body),
        retry_after,
        retryable: retryable_status(status),
    })
}

fn transport(e: reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // `without_url`: the URL of a Slack webhook is its credential.
    let e = e.without_url();
    let mut detail = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(&format!(": {s}"));
        src = s.source();
    }
    Failure { status: None, detail, body: String::new(), retry_after: None, retryable: true }
}

/// `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - now).num_milliseconds().max(0);
    Some(Duration::from_millis(ms as u64))
}

/// The wait before attempt `attempt + 1` (attempt 0 failed first):
/// exponential from `initial`, capped at `max`, with "equal jitter" (half
/// fixed, half random) so that retries spread out but never hammer; at
/// least `Retry-After` when the server gave one.
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = exp / 2;
    let jittered = half + half.mul_f64(rng.random::<f64>());
    match retry_after {
        Some(ra) => ra.max(jittered),
        None => jittered,
    }
}

/// A token bucket: `rate` requests per second, `burst` at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = if burst == 0 { rate.ceil().max(1.0) } else { f64::from(burst) };
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes a token for a request at `now` and says how long to wait
    /// before sending it (zero when a token was there).
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn statuses_worth_retrying() {
        for s in [429, 500, 502, 503, 504, 408, 401, 403] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 404, 409, 410, 413, 422, 300] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:50Z").unwrap().to_utc();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_jittered_and_honours_retry_after() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(60));
        for attempt in 0..12 {
            let cap = (Duration::from_millis(500) * 2u32.pow(attempt)).min(m);
            for _ in 0..50 {
                let d = backoff(attempt, i, m, None, &mut rng);
                assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
            }
        }
        let d = backoff(0, i, m, Some(Duration::from_secs(30)), &mut rng);
        assert_eq!(d, Duration::from_secs(30));
        // Distinct waits: jitter spreads retries out.
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(3, i, m, None, &mut rng)).collect();
        assert!(waits.len() > 15);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        // Empty: the next waits half a second (2 per second), the one after a second.
        assert_eq!(b.take(t0), Duration::from_millis(500));
        assert_eq!(b.take(t0), Duration::from_millis(1000));
        // Long idle: back to a full burst, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Duration::ZERO);
        }
        assert_eq!(b.take(later), Duration::from_millis(500));
        // One per second with the default burst of one.
        let mut s = TokenBucket::new(1.0, 0, t0);
        assert_eq!(s.take(t0), Duration::ZERO);
        assert_eq!(s.take(t0 + Duration::from_millis(250)), Duration::from_millis(750));
    }
}
