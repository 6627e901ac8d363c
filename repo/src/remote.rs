//! Mirrors and their health: byte ranges of an object fetched from the first mirror that is
//! up and serves bytes that pass the caller's check; a mirror that fails is retried a
//! bounded number of times, then marked down for a while (reads skip it at once) and probed
//! again later. Each outage is logged once when it starts and once when it ends, never per
//! read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::http::{self, Body, Timeouts, Url};

/// How a mirror is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A static HTTP repository: objects at `<url>/blobs/sha256/<hex>`, the index at
    /// `<url>/index`.
    Http(Url),
    /// An OCI distribution registry: objects are blobs of repository `name`, the index a
    /// blob tagged `index` ([`crate::oci`]).
    Oci {
        /// The registry (`http://host:port`).
        registry: Url,
        /// The repository name (`packagefs/main`).
        name: String,
    },
}

impl Base {
    /// Parses `http://host:port/path` or `oci://host:port/name`.
    pub fn parse(s: &str) -> Result<Base, String> {
        if let Some(rest) = s.strip_prefix("oci://") {
            let (hostport, name) = rest
                .split_once('/')
                .ok_or_else(|| format!("{s}: an oci:// address needs a repository name"))?;
            let name = name.trim_end_matches('/');
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
                || name.split('/').any(|c| c.is_empty() || c == "..")
            {
                return Err(format!(
                    "{s}: a repository name is lowercase letters, digits, `.`, `_`, `-` and `/`"
                ));
            }
            let registry = Url::parse(&format!("http://{hostport}/"))?;
            return Ok(Base::Oci {
                registry,
                name: name.to_owned(),
            });
        }
        Url::parse(s).map(Base::Http)
    }

    /// Where object `digest` (`sha256:<hex>`) is.
    pub fn object_url(&self, digest: &str) -> Url {
        match self {
            Base::Http(u) => u.join(&format!("blobs/{}", digest.replacen(':', "/", 1))),
            Base::Oci { registry, name } => registry.join(&format!("v2/{name}/blobs/{digest}")),
        }
    }
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base::Http(u) => write!(f, "{u}"),
            Base::Oci { registry, name } => {
                write!(f, "oci://{}:{}/{name}", registry.host, registry.port)
            }
        }
    }
}

/// Retries, timeouts and how long a failed mirror is left alone.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Timeouts of each request.
    pub timeouts: Timeouts,
    /// Attempts on one mirror for one read before the next mirror is asked.
    pub attempts: u32,
    /// Failed reads in a row after which a mirror is marked down.
    pub down_after: u32,
    /// How long a mirror stays down before it is probed again.
    pub down_for: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            timeouts: Timeouts::default(),
            attempts: 2,
            down_after: 2,
            down_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
    /// When it was last marked down.
    marked: Option<Instant>,
    /// An outage was logged and its end not yet.
    logged: bool,
}

/// One mirror and its health (shared by every package read from it).
#[derive(Debug)]
pub struct Mirror {
    /// Its address.
    pub base: Base,
    health: Mutex<Health>,
}

impl Mirror {
    /// A mirror at `base`, healthy.
    pub fn new(base: Base) -> Mirror {
        Mirror {
            base,
            health: Mutex::new(Health::default()),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while marked down (a read skips it without a request).
    pub fn is_down(&self) -> bool {
        self.health().down_until.is_some_and(|t| Instant::now() < t)
    }

    /// A request started at `started` succeeded. One that started before the mirror was
    /// marked down (a read in flight when the server went away) says nothing about now.
    fn ok(&self, started: Instant) {
        let mut h = self.health();
        if h.marked.is_some_and(|m| started < m) {
            return;
        }
        if h.logged {
            info!(mirror = %self.base, "mirror is back");
        }
        *h = Health::default();
    }

    fn failed(&self, why: &str, p: &Policy, wrong_bytes: bool) {
        let mut h = self.health();
        h.failures += 1;
        if wrong_bytes {
            // A mirror that serves wrong bytes is not asked again until it is probed.
            h.failures = h.failures.max(p.down_after);
        }
        let probing = h.down_until.is_some();
        if h.failures >= p.down_after || probing {
            h.down_until = Some(Instant::now() + p.down_for);
            h.marked = Some(Instant::now());
            if !h.logged {
                h.logged = true;
                warn!(
                    mirror = %self.base,
                    "mirror is down: {why}; reads go to the next mirror, or fail with EIO, and it is tried again every {:?}",
                    p.down_for
                );
            }
        }
    }
}

/// Mirrors in order, with the policy for reading from them.
#[derive(Debug, Clone)]
pub struct Mirrors {
    /// The mirrors, first preferred.
    pub list: Vec<Arc<Mirror>>,
    /// The policy.
    pub policy: Policy,
}

impl Mirrors {
    /// Bytes `start .. start + len` of object `digest`, from the first mirror that serves
    /// exactly that many bytes passing `check`. The error names what each mirror did.
    pub fn fetch_range(
        &self,
        digest: &str,
        start: u64,
        len: u64,
        check: &dyn Fn(&[u8]) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut why = Vec::new();
        for m in &self.list {
            if m.is_down() {
                why.push(format!("{}: down", m.base));
                continue;
            }
            let url = m.base.object_url(digest);
            let range = format!("bytes={}-{}", start, start + len - 1);
            let mut last = String::new();
            for _ in 0..self.policy.attempts.max(1) {
                let started = Instant::now();
                let r = http::request(
                    "GET",
                    &url,
                    &[("Range", &range)],
                    Body::Empty,
                    len,
                    self.policy.timeouts,
                );
                // (why, wrong bytes, worth another attempt)
                let fail = match r {
                    Ok(r)
                        if (r.status == 206 || (r.status == 200 && start == 0))
                            && r.body.len() as u64 == len =>
                    {
                        match check(&r.body) {
                            Ok(()) => {
                                m.ok(started);
                                return Ok(r.body);
                            }
                            // Wrong bytes: never used, never stored; the mirror is marked
                            // down at once.
                            Err(e) => (e, true, false),
                        }
                    }
                    Ok(r) if r.status == 206 || r.status == 200 => (
                        format!("sent {} bytes for a range of {len}", r.body.len()),
                        false,
                        true,
                    ),
                    Ok(r) => (format!("HTTP {}", r.status), false, r.status != 404),
                    Err(e) => (e.to_string(), false, true),
                };
                last = fail.0;
                // Each failed attempt counts, so a dead or slow mirror is marked down after
                // `down_after` of them, and later reads skip it at once.
                m.failed(&last, &self.policy, fail.1);
                if !fail.2 || m.is_down() {
                    break;
                }
            }
            why.push(format!("{}: {last}", m.base));
        }
        Err(why.join("; "))
    }

    /// A whole small object (the index), from the first mirror that has it.
    pub fn fetch_small(&self, what: &dyn Fn(&Base) -> Url, max: u64) -> Result<Vec<u8>, String> {
        let mut why = Vec::new();
        for m in &self.list {
            let url = what(&m.base);
            match http::request("GET", &url, &[], Body::Empty, max, self.policy.timeouts) {
                Ok(r) if r.status == 200 => return Ok(r.body),
                Ok(r) => why.push(format!("{url}: HTTP {}", r.status)),
                Err(e) => why.push(format!("{url}: {e}")),
            }
        }
        Err(why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves `data` with Range requests (optionally with byte `flip` flipped); counts
    /// requests.
    fn serve(data: Vec<u8>, flip: Option<usize>) -> (String, Arc<AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        let mut data = data;
        if let Some(i) = flip {
            data[i] ^= 1;
        }
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let mut s = s;
                let mut req = [0u8; 4096];
                let k = s.read(&mut req).unwrap_or(0);
                let req = String::from_utf8_lossy(&req[..k]).to_string();
                let range = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Range: bytes="))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| {
                        Some((a.parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?))
                    });
                let Some((a, b)) = range else {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n");
                    continue;
                };
                let body = &data[a..=b.min(data.len() - 1)];
                let _ = write!(
                    s,
                    "HTTP/1.1 206 Partial\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body);
            }
        });
        (format!("http://127.0.0.1:{port}/r"), n)
    }

    fn dead() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/r")
    }

    fn mirrors(urls: &[String]) -> Mirrors {
        Mirrors {
            list: urls
                .iter()
                .map(|u| Arc::new(Mirror::new(Base::parse(u).unwrap())))
                .collect(),
            policy: Policy {
                timeouts: Timeouts {
                    connect: Duration::from_secs(1),
                    io: Duration::from_secs(1),
                    total: Duration::from_secs(2),
                },
                down_for: Duration::from_millis(300),
                ..Policy::default()
            },
        }
    }

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn wrong_bytes_fail_over_to_the_next_mirror_and_mark_the_first_down() {
        let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
        let want = data[100..200].to_vec();
        let (bad, bad_n) = serve(data.clone(), Some(150));
        let (good, good_n) = serve(data.clone(), None);
        let m = mirrors(&[bad, good]);
        let check = |b: &[u8]| {
            if b == want {
                Ok(())
            } else {
                Err("wrong bytes".to_string())
            }
        };
        assert_eq!(m.fetch_range(DIGEST, 100, 100, &check).unwrap(), want);
        assert_eq!(
            bad_n.load(Ordering::SeqCst),
            1,
            "wrong bytes are not asked for twice"
        );
        assert!(m.list[0].is_down());
        // While it is down, reads go straight to the next mirror.
        m.fetch_range(DIGEST, 100, 100, &check).unwrap();
        assert_eq!(bad_n.load(Ordering::SeqCst), 1);
        assert_eq!(good_n.load(Ordering::SeqCst), 2);
        // Probed again once its time is up.
        std::thread::sleep(Duration::from_millis(350));
        m.fetch_range(DIGEST, 100, 100, &check).unwrap();
        assert_eq!(bad_n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_dead_mirror_costs_bounded_attempts_then_is_skipped() {
        let m = mirrors(&[dead()]);
        let e = m.fetch_range(DIGEST, 0, 10, &|_| Ok(())).unwrap_err();
        assert!(e.contains("refused") || e.contains("Connection"), "{e}");
        assert!(m.list[0].is_down());
        let e = m.fetch_range(DIGEST, 0, 10, &|_| Ok(())).unwrap_err();
        assert!(e.ends_with(": down"), "{e}");
        // A response of the wrong length is a failure, not data.
        let (short, _) = serve(vec![7u8; 50], None);
        let m = mirrors(&[short]);
        assert!(m.fetch_range(DIGEST, 0, 100, &|_| Ok(())).is_err());
    }
}
