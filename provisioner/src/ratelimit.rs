//! Per-tenant request rate limits: a token bucket per tenant and class
//! (reads, writes), in this process's memory. Each replica limits what it
//! serves; a tenant spread over N replicas gets up to N times the rate,
//! which is what the limit is for: one tenant cannot take a replica's
//! capacity from the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One bucket's shape: `per_second` tokens refill it, up to `burst`.
/// A `per_second` of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    fn unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// The limits of both classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// GET and HEAD.
    pub read: Rate,
    /// Everything else.
    pub write: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            read: Rate {
                per_second: 100.0,
                burst: 200.0,
            },
            write: Rate {
                per_second: 20.0,
                burst: 40.0,
            },
        }
    }
}

impl RateLimits {
    pub const UNLIMITED: RateLimits = RateLimits {
        read: Rate::UNLIMITED,
        write: Rate::UNLIMITED,
    };
}

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Read,
    Write,
}

impl Class {
    pub fn of(method: &http::Method) -> Class {
        if method == http::Method::GET || method == http::Method::HEAD {
            Class::Read
        } else {
            Class::Write
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones are dropped (a full bucket is the same as
/// no bucket).
const PRUNE_ABOVE: usize = 4096;

/// The limiter of one process.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(String, Class), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `tenant`'s bucket of `class`, or says how long
    /// until one is there.
    pub fn check(&self, tenant: &str, class: Class) -> Result<(), Duration> {
        self.check_at(tenant, class, Instant::now())
    }

    fn check_at(&self, tenant: &str, class: Class, now: Instant) -> Result<(), Duration> {
        let rate = match class {
            Class::Read => self.limits.read,
            Class::Write => self.limits.write,
        };
        if rate.unlimited() {
            return Ok(());
        }
        let burst = rate.burst.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|(_, c), b| {
                let r = match c {
                    Class::Read => self.limits.read,
                    Class::Write => self.limits.write,
                };
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * r.per_second
                    < r.burst.max(1.0)
            });
        }
        let bucket = buckets
            .entry((tenant.to_string(), class))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / rate.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(RateLimits {
            read: Rate::UNLIMITED,
            write: Rate { per_second, burst },
        })
    }

    #[test]
    fn burst_then_refill_per_tenant() {
        let l = limiter(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", Class::Write, t0).is_ok());
        }
        let wait = l.check_at("a", Class::Write, t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another tenant and the other class are untouched.
        assert!(l.check_at("b", Class::Write, t0).is_ok());
        assert!(l.check_at("a", Class::Read, t0).is_ok());
        // Half a second later one token is back, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check_at("a", Class::Write, t1).is_ok());
        assert!(l.check_at("a", Class::Write, t1).is_err());
    }

    #[test]
    fn full_buckets_are_pruned() {
        let l = limiter(1000.0, 1.0);
        let t0 = Instant::now();
        for i in 0..=PRUNE_ABOVE + 1 {
            let _ = l.check_at(&format!("t{i}"), Class::Write, t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert!(l.check_at("x", Class::Write, later).is_ok());
        assert!(l.buckets.lock().unwrap().len() < 10);
    }
}
