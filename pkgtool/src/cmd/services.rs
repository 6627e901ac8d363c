//! The systemd side of updates (issue 13): `systemctl` behind [`pkgset::update::Services`],
//! finding the view that serves a layer, and the unit generator that hands systemd the
//! drop-ins of the active packages' services (and, for a view mounted elsewhere than `/`,
//! their units).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use format::archive::{Archive, Kind};
use pkgset::generation::{self, LayerPaths};
use pkgset::services::ServicePlan;
use pkgset::update::{self, Pending, Services, UnitState};

use crate::cli::ServiceArgs;

/// `systemctl`, waiting for each job.
pub struct Systemd;

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        Err(format!(
            "systemctl {} exited with {}{}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            if line.is_empty() {
                String::new()
            } else {
                format!(": {line}")
            }
        ))
    }
}

/// A systemd time span as `systemctl show` prints it (`0`, `30s`, `1min 30s`, `500ms`),
/// in microseconds; `infinity` is 0 (no watchdog).
pub fn parse_timespan(s: &str) -> u64 {
    let s = s.trim();
    if s.is_empty() || s == "infinity" {
        return 0;
    }
    let mut total = 0u64;
    for word in s.split_whitespace() {
        let digits: String = word.chars().take_while(|c| c.is_ascii_digit()).collect();
        let unit = &word[digits.len()..];
        let n: u64 = digits.parse().unwrap_or(0);
        let mul = match unit {
            "" | "us" | "usec" => 1,
            "ms" | "msec" => 1_000,
            "s" | "sec" => 1_000_000,
            "min" | "m" => 60_000_000,
            "h" | "hr" => 3_600_000_000,
            _ => 0,
        };
        total += n * mul;
    }
    total
}

impl Services for Systemd {
    fn stop(&mut self, unit: &str) -> Result<(), String> {
        systemctl(&["stop", unit]).map(|_| ())
    }

    fn start(&mut self, unit: &str) -> Result<(), String> {
        systemctl(&["start", unit]).map(|_| ())
    }

    fn reload(&mut self) -> Result<(), String> {
        systemctl(&["daemon-reload"]).map(|_| ())
    }

    fn state(&mut self, unit: &str) -> Result<UnitState, String> {
        let text = systemctl(&[
            "show",
            unit,
            "-p",
            "ActiveState,SubState,Type,Result,NRestarts,MainPID,WatchdogUSec,ExecMainStatus",
        ])?;
        let mut st = UnitState::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "ActiveState" => st.active = v.into(),
                "SubState" => st.sub = v.into(),
                "Type" => st.kind = v.into(),
                "Result" => st.result = v.into(),
                "NRestarts" => st.restarts = v.parse().unwrap_or(0),
                "MainPID" => st.main_pid = v.parse().unwrap_or(0),
                "WatchdogUSec" => st.watchdog_usec = parse_timespan(v),
                "ExecMainStatus" => st.exit_status = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok(st)
    }

    fn check(&mut self, argv: &[String], timeout: Duration) -> Result<(), String> {
        run_check(argv, timeout)
    }
}

/// Runs a health command with a time limit: `Err` says how it failed, on one line (its
/// last line of output, if any).
pub fn run_check(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} ms", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for {prog}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    if text.trim().is_empty() {
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let how = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    Err(if last.is_empty() {
        how
    } else {
        format!("{how}: {}", last.trim())
    })
}

/// A packagefs view: where it is mounted and the layer directories it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    /// The mount point.
    pub at: PathBuf,
    /// The layers, lowest first, as `(name, dir)`.
    pub layers: Vec<(String, PathBuf)>,
}

fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&format::text::unescape_octal(s)).into_owned()
}

/// The packagefs views of `/proc/self/mountinfo` mounted with their layers as the source
/// (`system=/data/system`, as fstab, `packagefs@.service` and the boot mount them).
pub fn views(mountinfo: &str) -> Vec<ViewMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 2 || r[0] != "fuse.packagefs" {
            continue;
        }
        let source = unescape(r[1]);
        let layers: Vec<(String, PathBuf)> = source
            .split(':')
            .filter_map(|s| s.split_once('='))
            .map(|(n, d)| (n.to_string(), PathBuf::from(d)))
            .collect();
        if !layers.is_empty() {
            out.push(ViewMount {
                at: PathBuf::from(unescape(l[4])),
                layers,
            });
        }
    }
    out
}

/// The mount point of the view serving layer `dir`, if one is mounted.
pub fn view_of(dir: &Path) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = fs::canonicalize(dir).ok()?;
    views(&info)
        .into_iter()
        .find(|v| {
            v.layers
                .iter()
                .any(|(_, d)| fs::canonicalize(d).is_ok_and(|c| c == want))
        })
        .map(|v| v.at)
}

/// True when systemd is the init system (sd_booted()).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// How a set-changing command treats the services of the layer it changes.
pub struct Ctx {
    /// `--dry-run`: print the change and its plan, change nothing.
    pub dry_run: bool,
    /// Where the layer is served, when its services are managed.
    pub managed: Option<update::Options>,
    /// Why they are not, when a plan has services.
    pub why_not: String,
}

impl Ctx {
    /// Decides from the arguments and the machine: services are managed when pkgtool runs
    /// as root, systemd runs, a view serves the layer, and `--no-restart` is not given.
    pub fn new(a: &ServiceArgs, layer: &Path) -> Ctx {
        let fault = std::env::var("PKGTOOL_FAULT")
            .ok()
            .filter(|f| !f.is_empty());
        if a.no_restart {
            return Ctx {
                dry_run: a.dry_run,
                managed: None,
                why_not: "--no-restart: services are left as they are".into(),
            };
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ctx {
                dry_run: a.dry_run,
                managed: None,
                why_not: "not root: the system's services are left as they are".into(),
            };
        }
        if !systemd_running() {
            return Ctx {
                dry_run: a.dry_run,
                managed: None,
                why_not: "systemd is not running: services are left as they are".into(),
            };
        }
        let view = a.view.clone().or_else(|| view_of(layer));
        match view {
            Some(v) => Ctx {
                dry_run: a.dry_run,
                managed: Some(update::Options {
                    view: v,
                    fault,
                    ..update::Options::default()
                }),
                why_not: String::new(),
            },
            None => Ctx {
                dry_run: a.dry_run,
                managed: None,
                why_not: format!(
                    "no packagefs view serves {}: services are left as they are (--view DIR names it)",
                    layer.display()
                ),
            },
        }
    }
}

/// Before a change: an update of the layer still running is refused; one left by a
/// process that died is undone first (with its services, when they are managed).
pub fn settle(paths: &LayerPaths, ctx: &Ctx) -> anyhow::Result<()> {
    match update::pending(paths)? {
        Pending::None => Ok(()),
        Pending::Running(t) => bail!(
            "an update of {} is running (pid {}, {}); try again when it is done",
            paths.dir.display(),
            t.pid,
            t.command
        ),
        Pending::Interrupted(t, lock) => {
            let mut sm = Systemd;
            let opts = ctx.managed.clone().unwrap_or_default();
            let sm: Option<&mut dyn Services> = match ctx.managed {
                Some(_) => Some(&mut sm),
                None => None,
            };
            let rec = update::recover(paths, t, lock, sm, &opts, "by pkgtool")
                .map_err(|e| anyhow::anyhow!("cannot undo an interrupted update: {e}"))?;
            eprintln!("pkgtool: {}", rec.reason);
            Ok(())
        }
    }
}

/// Prints a service plan, a line each.
pub fn print_plan(out: &mut dyn Write, plan: &ServicePlan) -> std::io::Result<()> {
    if plan.is_empty() {
        return writeln!(out, "services: none affected");
    }
    for l in plan.lines() {
        writeln!(out, "services: {l}")?;
    }
    Ok(())
}

/// The services side of one set-changing command: nothing, or a transaction.
pub struct Run {
    txn: Option<update::Update>,
    sm: Systemd,
}

impl Run {
    /// With `--dry-run`, prints `would WOULD` and the plan and returns `None`: the caller
    /// changes nothing. Otherwise [`Run::begin`].
    pub fn start(
        out: &mut dyn Write,
        ctx: &Ctx,
        paths: &LayerPaths,
        plan: &ServicePlan,
        from: Option<u64>,
        command: &str,
        would: &str,
    ) -> anyhow::Result<Option<Run>> {
        if ctx.dry_run {
            writeln!(out, "would {would}")?;
            print_plan(out, plan)?;
            return Ok(None);
        }
        Run::begin(out, ctx, paths, plan, from, command).map(Some)
    }

    /// Prints the plan and, when services are managed, writes it and stops the affected
    /// services of the old set.
    pub fn begin(
        out: &mut dyn Write,
        ctx: &Ctx,
        paths: &LayerPaths,
        plan: &ServicePlan,
        from: Option<u64>,
        command: &str,
    ) -> anyhow::Result<Run> {
        let mut sm = Systemd;
        if plan.is_empty() {
            return Ok(Run { txn: None, sm });
        }
        let Some(opts) = ctx.managed.clone() else {
            eprintln!("pkgtool: {}", ctx.why_not);
            return Ok(Run { txn: None, sm });
        };
        print_plan(out, plan)?;
        out.flush()?;
        let txn = update::Update::begin(paths, plan, from, command, opts, &mut sm)
            .map_err(|e| anyhow::anyhow!("nothing changed: {e}"))?;
        Ok(Run { txn: Some(txn), sm })
    }

    /// The generation was switched to `n`.
    pub fn switched(&mut self, n: Option<u64>) -> anyhow::Result<()> {
        if let (Some(t), Some(n)) = (self.txn.as_mut(), n) {
            t.switched(n).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// The switch failed: the stopped services start again.
    pub fn abort(mut self) {
        if let Some(t) = self.txn.take() {
            t.abort(&mut self.sm);
        }
    }

    /// Starts and checks the new services; an error (exit 1) if they were rolled back.
    pub fn finish(mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        let Some(t) = self.txn.take() else {
            return Ok(());
        };
        let o = t.finish(&mut self.sm).map_err(|e| anyhow::anyhow!("{e}"))?;
        for c in &o.record.checks {
            writeln!(
                out,
                "services: {} {} {} ({} ms){}",
                c.service,
                c.check,
                if c.ok { "ok" } else { "FAILED" },
                c.ms,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.detail)
                }
            )?;
        }
        match o.failure {
            None => {
                writeln!(out, "services: healthy")?;
                Ok(())
            }
            Some(why) => {
                out.flush()?;
                bail!(
                    "rolled back to generation {}: {why}",
                    o.record.after.map_or("?".to_string(), |g| g.to_string())
                )
            }
        }
    }
}

/// The services a change from `old` to `new` (each a layer's set, lowest first) affects.
pub fn plan_of(
    names: &[String],
    old: &[Vec<pkgset::Candidate>],
    new: &[Vec<pkgset::Candidate>],
) -> ServicePlan {
    let old: Vec<pkgset::Candidate> = old.concat();
    let new: Vec<pkgset::Candidate> = new.concat();
    let g = |s: &[pkgset::Candidate]| {
        pkgset::check(names, s).unwrap_or(pkgset::Graph { edges: Vec::new() })
    };
    pkgset::services::plan(&old, &g(&old), &new, &g(&new))
}

// ---------------------------------------------------------------------------------------
// the generator

/// `packagefs-generator NORMAL [EARLY LATE]` (pkgtool run under that name, from
/// `/usr/lib/systemd/system-generators/`): for every packagefs view mounted with its
/// layers as the source, and every service its active packages declare, writes the
/// capability drop-in (`UNIT.d/zz-packagefs-capabilities.conf`); for a view mounted
/// elsewhere than `/`, also links the unit and the package's own `*.wants/` links into
/// the view. systemd runs it at boot and at every `daemon-reload`, so a generation switch
/// changes exactly the units of the packages that changed.
pub fn generator(args: &[String]) -> ExitCode {
    let Some(out) = args.get(1) else {
        eprintln!("packagefs-generator: expected the output directory");
        return ExitCode::from(2);
    };
    let n = generate_into(Path::new(out));
    if std::env::var_os("PACKAGEFS_GENERATOR_VERBOSE").is_some() {
        eprintln!("packagefs-generator: {n} services");
    }
    ExitCode::SUCCESS
}

/// Writes the drop-ins (and, for views not at `/`, the unit links) of every view's active
/// services under `out`; the number of services.
pub fn generate_into(out: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut n = 0;
    for v in views(&info) {
        for (_, dir) in &v.layers {
            match generate_layer(out, &v.at, dir) {
                Ok(k) => n += k,
                Err(e) => eprintln!("packagefs-generator: layer {}: {e}", dir.display()),
            }
        }
    }
    n
}

fn generate_layer(out: &Path, view: &Path, dir: &Path) -> anyhow::Result<usize> {
    let paths = LayerPaths::new(dir);
    let Some(list) = generation::read_list(&paths.active_list())? else {
        return Ok(0);
    };
    let mut n = 0;
    for e in &list.entries {
        let file = paths.pool_file(&e.id);
        // A layer's own files: never through a link, never blocking on a FIFO (this runs
        // as root at boot, over layers that other users may own).
        let opened = pkgset::owner::open_in_layer(&file)
            .map_err(|e| e.to_string())
            .and_then(|f| Archive::from_file(f, &file).map_err(|e| e.to_string()));
        let a = match opened {
            Ok(a) => a,
            Err(err) => {
                eprintln!("packagefs-generator: {}: {err}", e.label);
                continue;
            }
        };
        let m = a.manifest();
        for s in &m.services {
            let unit = s.unit_name();
            let text = pkgset::capabilities::dropin(&e.label, &m.capabilities);
            pkgset::capabilities::write_if_changed(
                &out.join(format!("{unit}.d"))
                    .join(pkgset::capabilities::DROPIN_NAME),
                &text,
            )?;
            if view != Path::new("/") {
                link(&out.join(&unit), &view.join(s.unit_path()))?;
                for w in a.walk() {
                    let p = String::from_utf8_lossy(&w.path).into_owned();
                    let mut parts = p.rsplit('/');
                    let (Some(name), Some(parent)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    if w.attr.kind == Kind::Symlink
                        && name == unit
                        && (parent.ends_with(".wants") || parent.ends_with(".requires"))
                    {
                        link(&out.join(parent).join(&unit), &view.join(s.unit_path()))?;
                    }
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

fn link(at: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(d) = at.parent() {
        fs::create_dir_all(d)?;
    }
    match fs::read_link(at) {
        Ok(t) if t == to => return Ok(()),
        Ok(_) => fs::remove_file(at)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(to, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_as_systemctl_prints_them() {
        assert_eq!(parse_timespan("0"), 0);
        assert_eq!(parse_timespan("infinity"), 0);
        assert_eq!(parse_timespan("30s"), 30_000_000);
        assert_eq!(parse_timespan("1min 30s"), 90_000_000);
        assert_eq!(parse_timespan("500ms"), 500_000);
    }

    #[test]
    fn views_are_the_packagefs_mounts_with_their_layers() {
        let info = "\
22 1 0:20 / / ro,relatime shared:1 - fuse.packagefs system=/data/system ro,user_id=0\n\
23 22 254:0 / /data rw,relatime shared:2 - ext4 /dev/vda rw\n\
40 22 0:41 / /run/my\\040pkg rw - fuse.packagefs system=/pkg/system:user=/home/u/my\\040pkg ro\n\
41 22 0:42 / /mnt/x rw - fuse.packagefs packagefs ro\n";
        let v = views(info);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].at, Path::new("/"));
        assert_eq!(
            v[0].layers,
            [("system".to_string(), PathBuf::from("/data/system"))]
        );
        assert_eq!(v[1].at, Path::new("/run/my pkg"));
        assert_eq!(v[1].layers[1].1, Path::new("/home/u/my pkg"));
    }

    #[test]
    fn a_health_command_fails_with_its_last_line_or_its_time_limit() {
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        assert_eq!(run_check(&sh("exit 0"), Duration::from_secs(5)), Ok(()));
        assert_eq!(
            run_check(
                &sh("echo warming up >&2; echo wrong answer >&2; exit 3"),
                Duration::from_secs(5)
            ),
            Err("exit status 3: wrong answer".into())
        );
        assert_eq!(
            run_check(&sh("sleep 5"), Duration::from_millis(200)),
            Err("timed out after 200 ms".into())
        );
        assert!(
            run_check(&["/nonexistent/check".to_string()], Duration::from_secs(1))
                .unwrap_err()
                .starts_with("cannot run /nonexistent/check")
        );
    }
}
