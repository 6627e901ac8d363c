//! A small HTTP/1.1 client over `std::net::TcpStream`, made for untrusted servers: every
//! request has a connect timeout, a read/write timeout and an overall deadline (a server
//! that drips one byte a second is cut off), headers are bounded, and a body is read only
//! up to the length the caller allows. GET and HEAD reuse idle connections (keep-alive,
//! a few per server, for a few seconds): a lazy start is a chain of small requests, each
//! waiting for the one before (a page fault at a time), so over a link with latency a new
//! connection per request costs a round trip each. A reused connection the server has
//! closed meanwhile is noticed before any byte of an answer and the request is sent again
//! on a new one (GET and HEAD are idempotent). Other methods use a connection of their own.
//! No TLS: repositories are plain HTTP, because every byte that matters is pinned by a
//! signature or a hash before it is used (FORMAT.md §12, §13).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest status line and headers.
const HEAD_MAX: usize = 64 * 1024;

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To connect.
    pub connect: Duration,
    /// For any one read or write to make progress.
    pub io: Duration,
    /// For the whole request, body included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(3),
            io: Duration::from_secs(5),
            total: Duration::from_secs(30),
        }
    }
}

/// An `http://host[:port]/path` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]`.
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s}: not an http:// address"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s}: bad port {p:?}"))?,
            ),
            _ => (hostport, 80),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
        {
            return Err(format!("{s}: bad host"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{s}: bad path"));
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// This address with `rel` appended to its path (a `/` between them).
    pub fn join(&self, rel: &str) -> Url {
        let mut path = self.path.trim_end_matches('/').to_owned();
        path.push('/');
        path.push_str(rel.trim_start_matches('/'));
        Url {
            path,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A response: status, headers (names lowercase) and the body read.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a request sends as its body.
pub enum Body<'a> {
    /// Nothing.
    Empty,
    /// These bytes.
    Bytes(&'a [u8]),
    /// `len` bytes read from a file.
    File(&'a std::fs::File, u64),
}

/// Idle connections kept per server.
const IDLE_PER_SERVER: usize = 4;
/// How long a connection may stay idle before it is not reused (servers close idle
/// connections after a while: nginx after 75 s by default).
const IDLE_FOR: Duration = Duration::from_secs(15);

/// Idle connections, by server.
static IDLE: std::sync::Mutex<Vec<(String, u16, TcpStream, Instant)>> =
    std::sync::Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<(String, u16, TcpStream, Instant)>> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

fn take_idle(url: &Url) -> Option<TcpStream> {
    let mut pool = idle();
    pool.retain(|c| c.3.elapsed() < IDLE_FOR);
    let i = pool
        .iter()
        .rposition(|c| c.0 == url.host && c.1 == url.port)?;
    Some(pool.swap_remove(i).2)
}

fn put_idle(url: &Url, s: TcpStream) {
    let mut pool = idle();
    pool.retain(|c| c.3.elapsed() < IDLE_FOR);
    if pool
        .iter()
        .filter(|c| c.0 == url.host && c.1 == url.port)
        .count()
        < IDLE_PER_SERVER
    {
        pool.push((url.host.clone(), url.port, s, Instant::now()));
    }
}

/// How an exchange failed.
enum Fail {
    /// On a reused connection, before any byte of an answer: the server had closed it.
    Stale(io::Error),
    /// Anything else.
    Other(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Other(e)
    }
}

/// Sends one request and reads the response, whose body may be at most `max_body` bytes
/// (a longer one is an error, never a larger allocation).
pub fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: Body<'_>,
    max_body: u64,
    t: Timeouts,
) -> io::Result<Response> {
    let start = Instant::now();
    let keep = matches!(body, Body::Empty) && (method == "GET" || method == "HEAD");
    if keep {
        while let Some(s) = take_idle(url) {
            match exchange(
                &s,
                method,
                url,
                headers,
                Body::Empty,
                max_body,
                t,
                start,
                true,
                true,
            ) {
                Ok((r, reuse)) => {
                    if reuse {
                        put_idle(url, s);
                    }
                    return Ok(r);
                }
                Err(Fail::Stale(_)) => continue,
                Err(Fail::Other(e)) => return Err(e),
            }
        }
    }
    let s = connect(url, t, start)?;
    match exchange(
        &s, method, url, headers, body, max_body, t, start, keep, false,
    ) {
        Ok((r, reuse)) => {
            if reuse {
                put_idle(url, s);
            }
            Ok(r)
        }
        Err(Fail::Stale(e) | Fail::Other(e)) => Err(e),
    }
}

/// The time left of the request, at most one read's or write's worth.
fn left(start: Instant, t: Timeouts, what: &str) -> io::Result<Duration> {
    t.total
        .checked_sub(start.elapsed())
        .filter(|d| !d.is_zero())
        .map(|d| d.min(t.io))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what}: no answer within {:?}", t.total),
            )
        })
}

fn connect(url: &Url, t: Timeouts, start: Instant) -> io::Result<TcpStream> {
    let addrs: Vec<_> = (url.host.trim_matches(|c| c == '[' || c == ']'), url.port)
        .to_socket_addrs()?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, t.connect.min(left(start, t, "connect")?)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One request and its response on `stream`; true with the response if the connection
/// may carry another request (`keep` asked for it, the server agreed, the body was
/// delimited and nothing follows it).
#[allow(clippy::too_many_arguments)]
fn exchange(
    stream: &TcpStream,
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: Body<'_>,
    max_body: u64,
    t: Timeouts,
    start: Instant,
    keep: bool,
    reused: bool,
) -> Result<(Response, bool), Fail> {
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: packagefs\r\nConnection: {}\r\n",
        url.path,
        url.host,
        url.port,
        if keep { "keep-alive" } else { "close" }
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    match &body {
        Body::Empty if method == "GET" || method == "HEAD" => {}
        Body::Empty => head.push_str("Content-Length: 0\r\n"),
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::File(_, n) => head.push_str(&format!("Content-Length: {n}\r\n")),
    }
    head.push_str("\r\n");
    let mut w = stream;
    stream.set_write_timeout(Some(left(start, t, "send")?))?;
    if let Err(e) = w.write_all(head.as_bytes()) {
        return Err(if reused {
            Fail::Stale(e)
        } else {
            Fail::Other(e)
        });
    }
    match body {
        Body::Empty => {}
        Body::Bytes(b) => {
            for piece in b.chunks(1 << 16) {
                stream.set_write_timeout(Some(left(start, t, "send")?))?;
                w.write_all(piece)?;
            }
        }
        Body::File(f, n) => {
            let mut r = f.take(n);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                stream.set_write_timeout(Some(left(start, t, "send")?))?;
                w.write_all(&buf[..k])?;
            }
        }
    }
    let mut r = BufReader::new(Timed {
        s: stream,
        start,
        t,
    });
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut line = Vec::new();
    let read_line = |r: &mut BufReader<Timed<'_>>, line: &mut Vec<u8>, used: &mut usize| {
        line.clear();
        let n = r
            .by_ref()
            .take((HEAD_MAX - *used) as u64 + 1)
            .read_until(b'\n', line)?;
        *used += n;
        if *used > HEAD_MAX {
            return Err(bad(format!(
                "response headers longer than {HEAD_MAX} bytes"
            )));
        }
        if n == 0 || !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the response headers",
            ));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(())
    };
    let mut used = 0;
    if let Err(e) = read_line(&mut r, &mut line, &mut used) {
        // Nothing of an answer on a reused connection: the server closed it while idle.
        let closed = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        );
        return Err(if reused && closed && used == 0 {
            Fail::Stale(e)
        } else {
            Fail::Other(e)
        });
    }
    let status_line = String::from_utf8_lossy(&line).into_owned();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("not an HTTP response: {status_line:?}")))?;
    let http11 = status_line.starts_with("HTTP/1.1 ");
    let mut headers = Vec::new();
    loop {
        read_line(&mut r, &mut line, &mut used)?;
        if line.is_empty() {
            break;
        }
        let l = String::from_utf8_lossy(&line);
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let agreed = keep
        && http11
        && !resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok((resp, agreed && r.buffer().is_empty()));
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let read_exact = |r: &mut BufReader<Timed<'_>>, out: &mut Vec<u8>, n: u64| {
        if out.len() as u64 + n > max_body {
            return Err(bad(format!("response body larger than {max_body} bytes")));
        }
        let mut want = n;
        let mut buf = [0u8; 1 << 16];
        while want > 0 {
            let k = r.read(&mut buf[..want.min(1 << 16) as usize])?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the body",
                ));
            }
            out.extend_from_slice(&buf[..k]);
            want -= k as u64;
        }
        Ok(())
    };
    let delimited = if chunked {
        let mut body = Vec::new();
        loop {
            let mut used = 0;
            read_line(&mut r, &mut line, &mut used)?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or("").trim();
            let n = u64::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                // Trailers, up to the empty line.
                loop {
                    read_line(&mut r, &mut line, &mut used)?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            read_exact(&mut r, &mut body, n)?;
            read_line(&mut r, &mut line, &mut used)?;
        }
        resp.body = body;
        true
    } else if let Some(len) = resp.header("content-length") {
        let n: u64 = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        let mut body = Vec::new();
        read_exact(&mut r, &mut body, n)?;
        resp.body = body;
        true
    } else {
        // Until the connection closes, bounded.
        let mut body = Vec::new();
        let mut buf = [0u8; 1 << 16];
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                break;
            }
            if body.len() as u64 + k as u64 > max_body {
                return Err(bad(format!("response body larger than {max_body} bytes")).into());
            }
            body.extend_from_slice(&buf[..k]);
        }
        resp.body = body;
        false
    };
    Ok((resp, agreed && delimited && r.buffer().is_empty()))
}

/// The connection, read under the request's deadline: every read first checks the time
/// left, so a server that sends a byte now and then is cut off at the deadline.
struct Timed<'a> {
    s: &'a TcpStream,
    start: Instant,
    t: Timeouts,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .t
            .total
            .checked_sub(self.start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no whole answer within {:?}", self.t.total),
                )
            })?;
        self.s.set_read_timeout(Some(left.min(self.t.io)))?;
        let mut s = self.s;
        s.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins_addresses() {
        let u = Url::parse("http://127.0.0.1:8080/repo").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/repo")
        );
        assert_eq!(u.join("index").path, "/repo/index");
        assert_eq!(Url::parse("http://h").unwrap().port, 80);
        for bad in [
            "https://h/",
            "http://:1/",
            "http://h:99999/",
            "http://h/a b",
            "ftp://x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    /// A server that answers with `reply` and then waits, or drips.
    fn serve(reply: Vec<u8>, drip: bool) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                if drip {
                    for b in reply {
                        if s.write_all(&[b]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                } else {
                    let _ = s.write_all(&reply);
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        });
        port
    }

    fn quick() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            io: Duration::from_millis(500),
            total: Duration::from_secs(1),
        }
    }

    fn get(port: u16, max: u64) -> io::Result<Response> {
        let u = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        request("GET", &u, &[], Body::Empty, max, quick())
    }

    #[test]
    fn reads_a_body_of_its_announced_length() {
        let p = serve(
            b"HTTP/1.1 206 Partial\r\nContent-Length: 3\r\n\r\nabcdef".to_vec(),
            false,
        );
        let r = get(p, 10).unwrap();
        assert_eq!((r.status, &r.body[..]), (206, &b"abc"[..]));
    }

    #[test]
    fn bounds_what_a_hostile_server_sends() {
        // Longer than allowed: refused before it is read.
        let p = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
            false,
        );
        let e = get(p, 1000).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // Shorter than announced, then silence: the io timeout, not a hang.
        let p = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab".to_vec(),
            false,
        );
        let t = Instant::now();
        assert!(get(p, 1000).is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
        // A slow drip: the overall deadline.
        let p = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".repeat(3),
            true,
        );
        let t = Instant::now();
        assert!(get(p, 1000).is_err());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Headers without end.
        let p = serve(
            [&b"HTTP/1.1 200 OK\r\n"[..], &b"X: y\r\n".repeat(20000)].concat(),
            false,
        );
        assert!(get(p, 1000).is_err());
        // Not HTTP at all.
        let p = serve(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), false);
        assert!(get(p, 1000).is_err());
    }

    /// A server answering every request on a connection with `reply`, closing each
    /// connection after `per_conn` answers; counts the connections it accepted.
    fn keep_alive_server(
        reply: &'static [u8],
        per_conn: usize,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = n.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    for _ in 0..per_conn {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if s.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, n)
    }

    #[test]
    fn gets_reuse_an_idle_connection() {
        let (p, accepted) =
            keep_alive_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 100);
        for _ in 0..5 {
            let r = get(p, 10).unwrap();
            assert_eq!(r.body, b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Chunked bodies are delimited too.
        let (p, accepted) = keep_alive_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            100,
        );
        for _ in 0..3 {
            assert_eq!(get(p, 10).unwrap().body, b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connection_the_server_closed_is_replaced_and_the_request_sent_again() {
        // One answer per connection, then the server closes it.
        let (p, accepted) = keep_alive_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
        for _ in 0..3 {
            assert_eq!(get(p, 10).unwrap().body, b"ok");
            // Let the close arrive.
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn connection_close_or_an_undelimited_body_is_not_reused() {
        let (p, accepted) = keep_alive_server(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            100,
        );
        assert_eq!(get(p, 10).unwrap().body, b"ok");
        assert_eq!(get(p, 10).unwrap().body, b"ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // HTTP/1.0: no keep-alive unless asked the 1.0 way.
        let (p, accepted) =
            keep_alive_server(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 100);
        assert_eq!(get(p, 10).unwrap().body, b"ok");
        assert_eq!(get(p, 10).unwrap().body, b"ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
