//! Real repository servers on loopback, started by the tests: nginx (static HTTP with
//! Range requests and PUT through its dav module) and Debian's `docker-registry` (the OCI
//! distribution registry). Each runs in the foreground as our own child, with a generated
//! configuration in its own temporary directory, and is killed and reaped on drop.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{wait_until, DEADLINE};

/// A free loopback port (bound and released: a server started at once gets it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let up = wait_until(DEADLINE, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() || child.try_wait().ok().flatten().is_some()
    });
    let exited = child.try_wait().ok().flatten();
    assert!(
        up && exited.is_none(),
        "{what} did not start on port {port} ({exited:?}):\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// nginx serving `root` at `http://127.0.0.1:PORT/`, with PUT allowed.
pub struct Nginx {
    dir: TempDir,
    root: PathBuf,
    /// The port.
    pub port: u16,
    child: Option<Child>,
    holder: Option<std::os::fd::OwnedFd>,
}

/// A socket bound to loopback `port` without listening: the port is taken, and a connection
/// to it is refused.
fn hold_port(port: u16) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the address is a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return None;
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        (r == 0).then_some(owned)
    }
}

/// The body of `GET PATH` on loopback `port` (empty on any failure).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

impl Nginx {
    /// Starts nginx on a free port serving `root` (created if missing).
    pub fn start(root: &Path) -> Nginx {
        Nginx::start_on(root, free_port())
    }

    /// Starts nginx on `port`.
    pub fn start_on(root: &Path, port: u16) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("e2e-nginx-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(root).unwrap();
        let mut n = Nginx {
            dir,
            root: root.to_owned(),
            port,
            child: None,
            holder: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(d.join(t)).unwrap();
        }
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format bytes '$request_method $uri $status $body_bytes_sent';
    access_log {d}/access.log bytes;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /.e2e-server {{
            return 200 "{d}";
        }}
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
        }}
    }}
}}
"#,
            d = d.display(),
            port = self.port,
            root = self.root.display()
        );
        fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nginx (scripts/test installs nginx-light)");
        self.holder = None;
        wait_listening(self.port, &mut child, "nginx", &d.join("error.log"));
        // Ours, not another test's server that took the port first.
        let who = http_get(self.port, "/.e2e-server");
        assert!(
            who.ends_with(&d.display().to_string()),
            "port {} is another server's: {who}",
            self.port
        );
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Kills the server (as a crash would). Its port stays taken (bound, not listening:
    /// connections are refused) until [`Nginx::restart`], so no other test's server gets it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.holder = hold_port(self.port);
        }
    }

    /// Starts it again on the same port, with the same root.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The access log: `METHOD URI STATUS BYTES` per request.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Body bytes sent for GET requests of paths containing `needle`.
    pub fn bytes_sent(&self, needle: &str) -> u64 {
        self.access_log()
            .lines()
            .filter(|l| l.starts_with("GET ") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian's `docker-registry` on a free port, storing in a temporary directory.
pub struct Registry {
    dir: TempDir,
    /// The port.
    pub port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts the registry.
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("e2e-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let d = dir.path();
        fs::create_dir_all(d.join("storage")).unwrap();
        fs::write(
            d.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                d.join("storage").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("registry.log")).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry (scripts/test installs it)");
        wait_listening(port, &mut child, "docker-registry", &d.join("registry.log"));
        // The API answers once the listener is up; give it the moment it needs.
        assert!(
            wait_until(Duration::from_secs(5), || http_get(port, "/v2/")
                .starts_with("{}")),
            "docker-registry on port {port} does not answer /v2/"
        );
        Registry {
            dir,
            port,
            child: Some(child),
        }
    }

    /// `oci://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("oci://127.0.0.1:{}/{name}", self.port)
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Body bytes sent for GET requests of paths containing `needle`, from the access log
    /// (`"GET PATH HTTP/1.1" STATUS BYTES ...`).
    pub fn bytes_sent(&self, needle: &str) -> u64 {
        self.log()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("\"GET ")?;
                let (path, rest) = rest.split_once(' ')?;
                if !path.contains(needle) {
                    return None;
                }
                let (_, rest) = rest.split_once("\" ")?;
                rest.split(' ').nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
