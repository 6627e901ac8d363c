//! One update of a layer's set as a transaction over its services (issue 13): plan, stop,
//! switch, start, check health, and on any failure switch back and start the old services
//! again, so the machine ends where it started.
//!
//! ```text
//! Update::begin   take state/transaction.lock, write state/transaction (the plan),
//!                      stop the affected services of the old set (dependents first)
//! (the caller switches the generation: install, remove, rollback commit or switch)
//! Update::switched(n)      record the generation switched to
//! Update::finish  wait for the daemon to serve it (state/served), daemon-reload,
//!                      start the new services (providers first), check their health
//!                      (readiness, health command, watchdog, stability, all within the
//!                      deadline); on failure: stop them, switch back, start the old
//!                      ones, check them; one journal record; remove state/transaction
//! Update::abort   the switch failed: start the stopped services again
//! recover / undo_at_boot   a record left by a process that died is undone: the
//!                      generation it started from is made active again and its services
//!                      started (by the next pkgtool run, or by the boot itself)
//! ```
//!
//! The decisions and their order live here, tested with a scripted service manager; the
//! systemd side ([`Services`]) is pkgtool's (`systemctl`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use format::active_list::ActiveList;
use format::manifest::Ready;
use serde::{Deserialize, Serialize};

use crate::generation::{self, LayerPaths, StateError};
use crate::journal::{self, Check, Record};
use crate::services::{ServicePlan, Unit};

/// What a service manager reports about a unit (systemd's properties of the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: `active`, `activating`, `deactivating`, `inactive`, `failed`, ...
    pub active: String,
    /// `SubState`: `running`, `exited`, `dead`, ...
    pub sub: String,
    /// `Type`: `simple`, `exec`, `notify`, ...
    pub kind: String,
    /// `Result`: `success`, `exit-code`, `signal`, `watchdog`, `timeout`, ...
    pub result: String,
    /// `NRestarts`.
    pub restarts: u64,
    /// `MainPID` (0: none).
    pub main_pid: u32,
    /// `WatchdogUSec` (0: none).
    pub watchdog_usec: u64,
    /// `ExecMainStatus`: the main process's exit status or signal.
    pub exit_status: i32,
}

/// A service manager: systemd in pkgtool, a script in tests.
pub trait Services {
    /// Stops a unit and waits for it to be stopped.
    fn stop(&mut self, unit: &str) -> Result<(), String>;
    /// Starts a unit and waits for the start job (for `Type=notify`: until `READY=1`).
    fn start(&mut self, unit: &str) -> Result<(), String>;
    /// Makes the manager read its units again (`daemon-reload`).
    fn reload(&mut self) -> Result<(), String>;
    /// The unit's state now.
    fn state(&mut self, unit: &str) -> Result<UnitState, String>;
    /// Runs a health command (argv, the program an absolute path) within `timeout`:
    /// `Err` is what went wrong, on one line.
    fn check(&mut self, argv: &[String], timeout: Duration) -> Result<(), String>;
}

/// A unit as the transaction record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRef {
    /// The unit (`web.service`).
    pub unit: String,
    /// Its package (`web-1.0.0`).
    pub package: String,
}

impl From<&Unit> for UnitRef {
    fn from(u: &Unit) -> UnitRef {
        UnitRef {
            unit: u.unit.clone(),
            package: u.package.clone(),
        }
    }
}

/// How far a transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The plan is written; services may be stopping.
    Planned,
    /// The generation was switched (`to`); services may be starting.
    Switched,
    /// Health failed: switching back.
    RollingBack,
}

/// `state/transaction`: the record of an update in progress, written before anything
/// stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// The process running it.
    pub pid: u32,
    /// When it began (UTC).
    pub began: String,
    /// The command or cause.
    pub command: String,
    /// The active generation before.
    pub from: Option<u64>,
    /// The generation switched to, once switched.
    pub to: Option<u64>,
    /// How far it got.
    pub phase: Phase,
    /// Services of the old set it stops (in stop order).
    pub stop: Vec<UnitRef>,
    /// Services of the new set it starts (in start order).
    pub start: Vec<UnitRef>,
}

impl TxnRecord {
    fn write(&self, paths: &LayerPaths) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(self).expect("a transaction serializes") + "\n";
        generation::write_atomic(&paths.transaction(), text.as_bytes())
    }

    fn read(paths: &LayerPaths) -> Result<Option<TxnRecord>, StateError> {
        let path = paths.transaction();
        match generation::read_state_file(&path, 1 << 20) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| StateError::Bad {
                    path,
                    reason: format!("not a transaction record: {e}"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(generation::io_err(&path)(e)),
        }
    }

    fn remove(paths: &LayerPaths) -> Result<(), StateError> {
        let path = paths.transaction();
        match fs::remove_file(&path) {
            Ok(()) => generation::sync_dir(&paths.state()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(generation::io_err(&path)(e)),
        }
    }
}

/// The lock of a running transaction (`state/transaction.lock`, `flock`): released when
/// the process ends, however it ends.
#[derive(Debug)]
pub struct TxnLock {
    _file: File,
}

impl TxnLock {
    /// Takes the lock without waiting; `Ok(None)` if another process holds it.
    pub fn try_acquire(paths: &LayerPaths) -> Result<Option<TxnLock>, StateError> {
        let path = paths.transaction_lock();
        fs::create_dir_all(paths.state()).map_err(generation::io_err(&paths.state()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(generation::io_err(&path))?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            Ok(Some(TxnLock { _file: file }))
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(generation::io_err(&path)(e))
            }
        }
    }
}

/// What the record of a layer says: nothing, an update running now (its pid), or one left
/// by a process that died.
#[derive(Debug)]
pub enum Pending {
    /// No transaction.
    None,
    /// A transaction whose process still runs.
    Running(TxnRecord),
    /// A transaction whose process died; the lock is now ours.
    Interrupted(TxnRecord, TxnLock),
}

/// Looks at a layer's transaction record.
pub fn pending(paths: &LayerPaths) -> Result<Pending, StateError> {
    let Some(t) = TxnRecord::read(paths)? else {
        return Ok(Pending::None);
    };
    match TxnLock::try_acquire(paths)? {
        None => Ok(Pending::Running(t)),
        Some(lock) => Ok(Pending::Interrupted(t, lock)),
    }
}

/// Waits until the daemon serving the layer serves generation `n` (its `state/served`
/// names the same packages as the generation's list), or `timeout`.
pub fn wait_served(paths: &LayerPaths, n: u64, timeout: Duration) -> Result<(), String> {
    let want = generation::read_list(&paths.generation_list(n))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no generation {n}"))?;
    let t0 = Instant::now();
    loop {
        let served =
            generation::read_state_file(&paths.served(), format::active_list::MAX_LEN as u64)
                .ok()
                .and_then(|t| ActiveList::parse(&t).ok());
        if let Some(s) = &served {
            if s.generation() == Some(n) || s.same_packages(&want) {
                return Ok(());
            }
        }
        if t0.elapsed() >= timeout {
            return Err(format!(
                "the view did not switch to generation {n} within {} s (it serves {}; \
                 is packagefs running, or is the layer pinned for this boot?)",
                timeout.as_secs(),
                served
                    .and_then(|s| s.generation())
                    .map_or("nothing known".to_string(), |g| format!("generation {g}"))
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Knobs of a transaction.
#[derive(Debug, Clone)]
pub struct Options {
    /// The view the layer is served in: relative health-command programs are found there.
    pub view: PathBuf,
    /// How long to wait for the daemon to switch its view.
    pub served_timeout: Duration,
    /// A fault to inject (tests): `kill-after-stop`, `kill-after-switch`.
    pub fault: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            view: PathBuf::from("/"),
            served_timeout: Duration::from_secs(30),
            fault: None,
        }
    }
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The record appended to the journal.
    pub record: Record,
    /// `None`: healthy; otherwise the one-line reason it was rolled back.
    pub failure: Option<String>,
}

/// An update in progress: see the module's documentation.
pub struct Update {
    paths: LayerPaths,
    rec: TxnRecord,
    plan: ServicePlan,
    opts: Options,
    stopped: Vec<String>,
    _lock: TxnLock,
}

impl Update {
    /// Writes the plan to `state/transaction` and stops the services `plan` stops. A
    /// failure to stop starts the stopped ones again and returns the reason.
    pub fn begin(
        paths: &LayerPaths,
        plan: &ServicePlan,
        from: Option<u64>,
        command: &str,
        opts: Options,
        sm: &mut dyn Services,
    ) -> Result<Update, String> {
        let lock = match TxnLock::try_acquire(paths).map_err(|e| e.to_string())? {
            Some(l) => l,
            None => {
                let pid = TxnRecord::read(paths)
                    .ok()
                    .flatten()
                    .map_or("?".to_string(), |t| t.pid.to_string());
                return Err(format!(
                    "another update of {} is running (pid {pid})",
                    paths.dir.display()
                ));
            }
        };
        let rec = TxnRecord {
            pid: std::process::id(),
            began: crate::stack::now_utc(),
            command: command.to_string(),
            from,
            to: None,
            phase: Phase::Planned,
            stop: plan.stop.iter().map(UnitRef::from).collect(),
            start: plan.start.iter().map(UnitRef::from).collect(),
        };
        rec.write(paths).map_err(|e| e.to_string())?;
        let mut t = Update {
            paths: paths.clone(),
            rec,
            plan: plan.clone(),
            opts,
            stopped: Vec::new(),
            _lock: lock,
        };
        for u in &plan.stop {
            if let Err(e) = sm.stop(&u.unit) {
                let why = format!("{}: stop failed: {e}", u.unit);
                t.restart_stopped(sm);
                let _ = TxnRecord::remove(&t.paths);
                return Err(why);
            }
            t.stopped.push(u.unit.clone());
        }
        t.fault("kill-after-stop");
        Ok(t)
    }

    fn fault(&self, at: &str) {
        if self.opts.fault.as_deref() == Some(at) {
            // SAFETY: raising a signal at ourselves (a test's crash at a chosen point).
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }

    fn restart_stopped(&mut self, sm: &mut dyn Services) {
        for u in self.stopped.iter().rev() {
            let _ = sm.start(u);
        }
        self.stopped.clear();
    }

    /// The switch failed: nothing changed but the stopped services, which start again.
    pub fn abort(mut self, sm: &mut dyn Services) {
        self.restart_stopped(sm);
        let _ = TxnRecord::remove(&self.paths);
    }

    /// Records the generation the layer switched to.
    pub fn switched(&mut self, n: u64) -> Result<(), String> {
        self.rec.to = Some(n);
        self.rec.phase = Phase::Switched;
        self.rec.write(&self.paths).map_err(|e| e.to_string())?;
        self.fault("kill-after-switch");
        Ok(())
    }

    /// Starts the new services and checks them; on failure rolls back. Appends one
    /// journal record (`update`, or `health-rollback` with the reason) and removes the
    /// transaction record.
    pub fn finish(mut self, sm: &mut dyn Services) -> Result<Outcome, String> {
        let to = self.rec.to.ok_or("finish before switch")?;
        let mut checks = Vec::new();
        let served = wait_served(&self.paths, to, self.opts.served_timeout);
        let failure = match served {
            Err(e) => Some(e),
            Ok(()) => {
                let r = sm
                    .reload()
                    .map_err(|e| format!("daemon-reload failed: {e}"));
                match r {
                    Err(e) => Some(e),
                    Ok(()) => start_and_check(sm, &self.plan.start, &self.opts.view, &mut checks),
                }
            }
        };
        let stopped: Vec<String> = self.plan.stop.iter().map(|u| u.unit.clone()).collect();
        let started: Vec<String> = self.plan.start.iter().map(|u| u.unit.clone()).collect();
        let Some(why) = failure else {
            let mut rec = Record::new(
                "update",
                &format!(
                    "{}: services of generation {} healthy",
                    self.rec.command, to
                ),
            );
            rec.before = self.rec.from;
            rec.after = Some(to);
            rec.stopped = stopped;
            rec.started = started;
            rec.checks = checks;
            rec.verdict = "healthy".into();
            self.append(&rec)?;
            TxnRecord::remove(&self.paths).map_err(|e| e.to_string())?;
            return Ok(Outcome {
                record: rec,
                failure: None,
            });
        };
        // Roll back: the new services stop, the old generation comes back, its services
        // start and are checked too.
        self.rec.phase = Phase::RollingBack;
        let _ = self.rec.write(&self.paths);
        for u in self.plan.start.iter().rev() {
            let _ = sm.stop(&u.unit);
        }
        let reason = format!("{}: {why}", self.rec.command);
        let mut back_checks = Vec::new();
        let mut verdict = "rolled-back".to_string();
        let mut lists = None;
        if let Some(from) = self.rec.from {
            let lock = generation::Lock::acquire(&self.paths).map_err(|e| e.to_string())?;
            let switched = switch_back(&self.paths, from);
            drop(lock);
            if let Ok(l) = &switched {
                lists = Some(l.clone());
            }
            if let Err(e) = switched {
                verdict = format!("failed: cannot switch back to generation {from}: {e}");
            } else {
                let again = wait_served(&self.paths, from, self.opts.served_timeout)
                    .and_then(|()| {
                        sm.reload()
                            .map_err(|e| format!("daemon-reload failed: {e}"))
                    })
                    .err()
                    .or_else(|| {
                        start_and_check(sm, &self.plan_back(), &self.opts.view, &mut back_checks)
                    });
                if let Some(e) = again {
                    verdict = format!("rolled-back, but the old services are not healthy: {e}");
                }
            }
        } else {
            verdict = "failed: there is no generation to go back to".into();
        }
        checks.extend(back_checks.into_iter().map(|mut c| {
            c.check = format!("rollback {}", c.check);
            c
        }));
        let mut rec = Record::new("health-rollback", &reason);
        if let Some((before, after)) = &lists {
            rec = rec.between(before.as_ref(), after);
        }
        rec.before = Some(to);
        rec.after = self.rec.from;
        rec.stopped = stopped.iter().chain(started.iter()).cloned().collect();
        rec.started = started.clone();
        rec.started
            .extend(self.plan.stop.iter().rev().map(|u| u.unit.clone()));
        rec.checks = checks;
        rec.verdict = verdict;
        self.append(&rec)?;
        TxnRecord::remove(&self.paths).map_err(|e| e.to_string())?;
        Ok(Outcome {
            record: rec,
            failure: Some(why),
        })
    }

    /// The old services, in start order.
    fn plan_back(&self) -> Vec<Unit> {
        self.plan.stop.iter().rev().cloned().collect()
    }

    fn append(&self, rec: &Record) -> Result<(), String> {
        let _lock = generation::Lock::acquire(&self.paths).map_err(|e| e.to_string())?;
        journal::append(&self.paths, rec).map_err(|e| e.to_string())
    }
}

/// Starts `units` in order and checks their health together; the first failure, named.
fn start_and_check(
    sm: &mut dyn Services,
    units: &[Unit],
    view: &Path,
    checks: &mut Vec<Check>,
) -> Option<String> {
    let mut watch = Vec::new();
    for u in units {
        let t0 = Instant::now();
        let r = sm.start(&u.unit);
        let ok = r.is_ok();
        checks.push(Check {
            service: u.unit.clone(),
            check: "start".into(),
            ok,
            ms: t0.elapsed().as_millis() as u64,
            detail: r.clone().err().unwrap_or_default(),
        });
        if let Err(e) = r {
            return Some(format!("{}: start failed: {e}", u.unit));
        }
        watch.push(Watch::new(u, t0, view));
    }
    health(sm, &mut watch, checks)
}

/// Where one service's checks are.
#[derive(Debug)]
enum Step {
    Ready,
    Command,
    Stable {
        since: Instant,
        restarts: u64,
        pid: u32,
    },
    Done,
}

#[derive(Debug)]
struct Watch {
    unit: Unit,
    t0: Instant,
    step: Step,
    step_t0: Instant,
    argv: Vec<String>,
    tries: u32,
    last: String,
}

impl Watch {
    fn new(u: &Unit, t0: Instant, view: &Path) -> Watch {
        let mut argv = u.health.command.clone();
        if let Some(p) = argv.first_mut() {
            if !p.starts_with('/') {
                *p = view.join(&*p).to_string_lossy().into_owned();
            }
        }
        Watch {
            unit: u.clone(),
            t0,
            step: Step::Ready,
            step_t0: t0,
            argv,
            tries: 0,
            last: String::new(),
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.unit.health.deadline.ms)
    }
}

/// Polls every service through its checks until all pass or one fails.
fn health(sm: &mut dyn Services, watch: &mut [Watch], checks: &mut Vec<Check>) -> Option<String> {
    loop {
        let mut waiting = false;
        for w in watch.iter_mut() {
            if matches!(w.step, Step::Done) {
                continue;
            }
            if let Some(e) = advance(sm, w, checks) {
                return Some(e);
            }
            if !matches!(w.step, Step::Done) {
                waiting = true;
                if w.t0.elapsed() > w.deadline() {
                    let what = match w.step {
                        Step::Ready => "ready",
                        Step::Command => "health",
                        _ => "stable",
                    };
                    let detail = format!(
                        "not healthy {} after its start{}",
                        w.unit.health.deadline,
                        if w.last.is_empty() {
                            String::new()
                        } else {
                            format!(" (last: {})", w.last)
                        }
                    );
                    checks.push(Check {
                        service: w.unit.unit.clone(),
                        check: format!("{what} deadline"),
                        ok: false,
                        ms: w.t0.elapsed().as_millis() as u64,
                        detail: detail.clone(),
                    });
                    return Some(format!("{}: {what}: {detail}", w.unit.unit));
                }
            }
        }
        if !waiting {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One step of one service's checks; `Some` is a failure.
fn advance(sm: &mut dyn Services, w: &mut Watch, checks: &mut Vec<Check>) -> Option<String> {
    let unit = w.unit.unit.clone();
    let h = w.unit.health.clone();
    let fail = |checks: &mut Vec<Check>, check: &str, t: Instant, detail: String| {
        checks.push(Check {
            service: unit.clone(),
            check: check.into(),
            ok: false,
            ms: t.elapsed().as_millis() as u64,
            detail: detail.clone(),
        });
        Some(format!("{unit}: {check}: {detail}"))
    };
    let st = match sm.state(&w.unit.unit) {
        Ok(s) => s,
        Err(e) => return fail(checks, "state", w.t0, e),
    };
    let down = |st: &UnitState| {
        format!(
            "{} ({}, result {}, status {})",
            st.active, st.sub, st.result, st.exit_status
        )
    };
    if matches!(st.active.as_str(), "failed" | "inactive" | "deactivating") {
        let what = match w.step {
            Step::Ready => "ready",
            Step::Command => "health",
            _ => {
                if st.result == "watchdog" {
                    "watchdog"
                } else {
                    "stable"
                }
            }
        };
        let t = w.step_t0;
        return fail(
            checks,
            what,
            w.t0,
            format!(
                "it stopped {} ms after its start: {}",
                t.duration_since(w.t0)
                    .as_millis()
                    .max(w.t0.elapsed().as_millis()),
                down(&st)
            ),
        );
    }
    match w.step {
        Step::Ready => {
            if st.active != "active" {
                w.last = down(&st);
                return None;
            }
            if h.ready == Ready::Notify && st.kind != "notify" {
                return fail(
                    checks,
                    "ready",
                    w.t0,
                    format!(
                        "the manifest wants READY=1 but the unit is Type={}",
                        st.kind
                    ),
                );
            }
            if let Some(wd) = h.watchdog {
                if st.watchdog_usec != wd.ms * 1000 {
                    return fail(
                        checks,
                        "watchdog",
                        w.t0,
                        format!(
                            "the unit's WatchdogSec is {} ms, the manifest says {wd}",
                            st.watchdog_usec / 1000
                        ),
                    );
                }
            }
            checks.push(Check {
                service: unit.clone(),
                check: "ready".into(),
                ok: true,
                ms: w.t0.elapsed().as_millis() as u64,
                detail: format!("{} ({})", st.active, st.sub),
            });
            w.step = Step::Command;
            w.step_t0 = Instant::now();
            None
        }
        Step::Command => {
            if !w.argv.is_empty() {
                let left = w.deadline().saturating_sub(w.t0.elapsed());
                let timeout =
                    Duration::from_millis(h.timeout.ms).min(left.max(Duration::from_millis(100)));
                w.tries += 1;
                if let Err(e) = sm.check(&w.argv, timeout) {
                    w.last = e;
                    return None;
                }
                checks.push(Check {
                    service: unit.clone(),
                    check: "health".into(),
                    ok: true,
                    ms: w.step_t0.elapsed().as_millis() as u64,
                    detail: format!(
                        "{} passed (try {})",
                        w.unit.health.command.join(" "),
                        w.tries
                    ),
                });
            }
            w.step = Step::Stable {
                since: Instant::now(),
                restarts: st.restarts,
                pid: st.main_pid,
            };
            None
        }
        Step::Stable {
            since,
            restarts,
            pid,
        } => {
            if st.restarts != restarts || (pid != 0 && st.main_pid != pid) {
                return fail(
                    checks,
                    "stable",
                    w.t0,
                    format!(
                        "it restarted {} ms after its start (restarts {restarts} -> {}, pid {pid} -> {})",
                        w.t0.elapsed().as_millis(),
                        st.restarts,
                        st.main_pid
                    ),
                );
            }
            if since.elapsed() >= Duration::from_millis(h.stable.ms) {
                checks.push(Check {
                    service: unit.clone(),
                    check: "stable".into(),
                    ok: true,
                    ms: since.elapsed().as_millis() as u64,
                    detail: format!("up {} without a restart", h.stable),
                });
                w.step = Step::Done;
            }
            None
        }
        Step::Done => None,
    }
}

/// Makes generation `n` active again without a journal record of its own (the caller
/// writes one that says why): the lists before and after.
fn switch_back(paths: &LayerPaths, n: u64) -> Result<(Option<ActiveList>, ActiveList), String> {
    let list = generation::read_list(&paths.generation_list(n))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("generation {n} is gone"))?;
    for e in &list.entries {
        if !paths.pool_file(&e.id).exists() {
            return Err(format!(
                "package {} of generation {n} is missing from the pool",
                e.label
            ));
        }
    }
    let before = generation::read_list(&paths.active_list()).ok().flatten();
    generation::write_atomic(&paths.active_list(), list.to_text().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok((before, list))
}

/// Undoes a transaction left by a process that died: the generation it started from is
/// made active again (if another is), and with a service manager its new services stop
/// and its old ones start. One journal record, `interrupted-update`; the record is
/// removed. `how`: `by pkgtool` or `at boot`.
pub fn recover(
    paths: &LayerPaths,
    t: TxnRecord,
    _lock: TxnLock,
    sm: Option<&mut dyn Services>,
    opts: &Options,
    how: &str,
) -> Result<Record, String> {
    let active = generation::read_list(&paths.active_list())
        .ok()
        .flatten()
        .and_then(|l| l.generation());
    let reason = format!(
        "update by pid {} ({}) interrupted {}; undone {how}",
        t.pid,
        t.command,
        match t.phase {
            Phase::Planned => "after stopping services".to_string(),
            Phase::Switched => format!("after switching to generation {}", t.to.unwrap_or(0)),
            Phase::RollingBack => "while rolling back".to_string(),
        }
    );
    let mut rec = Record::new("interrupted-update", &reason);
    rec.before = active;
    rec.after = t.from.or(active);
    let go_back = t.from.is_some() && t.from != active;
    if go_back {
        let from = t.from.unwrap_or(0);
        let _l = generation::Lock::acquire(paths).map_err(|e| e.to_string())?;
        let (before, list) = switch_back(paths, from)?;
        rec = rec.between(before.as_ref(), &list);
        rec.kind = "interrupted-update".into();
    }
    if let Some(sm) = sm {
        for u in t.start.iter().rev() {
            let _ = sm.stop(&u.unit);
            rec.stopped.push(u.unit.clone());
        }
        if let Some(from) = t.from {
            let _ = wait_served(paths, from, opts.served_timeout);
        }
        let _ = sm.reload();
        for u in t.stop.iter().rev() {
            let r = sm.start(&u.unit);
            rec.checks.push(Check {
                service: u.unit.clone(),
                check: "start".into(),
                ok: r.is_ok(),
                ms: 0,
                detail: r.err().unwrap_or_default(),
            });
            rec.started.push(u.unit.clone());
        }
    }
    rec.verdict = "undone".into();
    {
        let _l = generation::Lock::acquire(paths).map_err(|e| e.to_string())?;
        journal::append(paths, &rec).map_err(|e| e.to_string())?;
    }
    TxnRecord::remove(paths).map_err(|e| e.to_string())?;
    Ok(rec)
}

/// At boot (the caller holds the layer's lock; no service manager runs yet): a
/// transaction left by the previous boot is undone, and the boot then starts the old
/// generation's services like any boot. The message for the console, if there was one.
pub fn undo_at_boot(paths: &LayerPaths) -> Option<String> {
    let Ok(Some(t)) = TxnRecord::read(paths) else {
        return None;
    };
    let active = generation::read_list(&paths.active_list())
        .ok()
        .flatten()
        .and_then(|l| l.generation());
    let from = t.from;
    let mut rec = Record::new(
        "interrupted-update",
        &format!(
            "update by pid {} ({}) did not finish before the machine went down; undone at boot",
            t.pid, t.command
        ),
    );
    rec.before = active;
    rec.after = from.or(active);
    if let Some(f) = from.filter(|f| Some(*f) != active) {
        match switch_back(paths, f) {
            Ok((before, list)) => rec = rec.between(before.as_ref(), &list),
            Err(e) => {
                rec.verdict = format!("kept generation {}: {e}", active.unwrap_or(0));
            }
        }
    }
    if rec.verdict == "done" {
        rec.verdict = "undone".into();
    }
    let _ = journal::append(paths, &rec);
    let _ = TxnRecord::remove(paths);
    Some(match (from, active) {
        (Some(f), Some(a)) if f != a => format!(
            "an update interrupted by the last shutdown (generation {f} -> {a}) was undone: generation {f} is active again"
        ),
        _ => format!(
            "an update interrupted by the last shutdown was undone: generation {} stays active",
            active.unwrap_or(0)
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::services::plan;
    use crate::tests::{m, Lab};
    use crate::Candidate;

    /// A service manager that plays a script: `reload` plays the daemon too (the view
    /// serves the active list), and each started unit follows its package's fate.
    #[derive(Default)]
    struct Script {
        paths: Option<LayerPaths>,
        ops: Vec<String>,
        /// unit -> (state, polls since start)
        units: HashMap<String, (UnitState, u32)>,
        /// A unit that, once started from a package containing this label, dies at the
        /// given poll.
        dies: Option<(String, u32)>,
        started_from: HashMap<String, String>,
        failing_check: Option<String>,
    }

    impl Script {
        fn serve(&self) {
            let p = self.paths.as_ref().unwrap();
            let t = fs::read(p.active_list()).unwrap();
            fs::write(p.served(), t).unwrap();
        }
        fn package_of(&self, unit: &str) -> String {
            let p = self.paths.as_ref().unwrap();
            let list = generation::read_list(&p.active_list()).unwrap().unwrap();
            let name = unit.trim_end_matches(".service");
            list.entries
                .iter()
                .find(|e| e.label.starts_with(&format!("{name}-")))
                .map(|e| e.label.clone())
                .unwrap_or_default()
        }
    }

    impl Services for Script {
        fn stop(&mut self, unit: &str) -> Result<(), String> {
            self.ops.push(format!("stop {unit}"));
            self.units.remove(unit);
            Ok(())
        }
        fn start(&mut self, unit: &str) -> Result<(), String> {
            let pkg = self.package_of(unit);
            self.ops.push(format!("start {unit} ({pkg})"));
            self.started_from.insert(unit.into(), pkg);
            let st = UnitState {
                active: "active".into(),
                sub: "running".into(),
                kind: "exec".into(),
                result: "success".into(),
                main_pid: 100 + self.ops.len() as u32,
                ..UnitState::default()
            };
            self.units.insert(unit.into(), (st, 0));
            Ok(())
        }
        fn reload(&mut self) -> Result<(), String> {
            self.ops.push("reload".into());
            Ok(())
        }
        fn state(&mut self, unit: &str) -> Result<UnitState, String> {
            let pkg = self.started_from.get(unit).cloned().unwrap_or_default();
            let dies = self.dies.clone();
            let (st, polls) = self.units.get_mut(unit).ok_or("not loaded")?;
            *polls += 1;
            if let Some((label, at)) = dies {
                if pkg == label && *polls >= at {
                    st.active = "failed".into();
                    st.sub = "failed".into();
                    st.result = "exit-code".into();
                    st.exit_status = 1;
                }
            }
            Ok(st.clone())
        }
        fn check(&mut self, argv: &[String], _timeout: Duration) -> Result<(), String> {
            self.ops.push(format!("check {}", argv.join(" ")));
            match &self.failing_check {
                Some(f) if argv.iter().any(|a| a.contains(f.as_str())) => {
                    Err("exit status 1".into())
                }
                _ => Ok(()),
            }
        }
    }

    const HEALTH: &str = r#""services":[{"name":"web","health":{"command":["bin/check"],"stable":"300ms","deadline":"2s"}}]"#;

    struct Fixture {
        _lab: Lab,
        _dir: tempfile::TempDir,
        paths: LayerPaths,
        v1: Vec<Candidate>,
        v2: Vec<Candidate>,
    }

    /// A layer with generation 1 (web 1.0.0, db 1.0.0) active.
    fn fixture() -> Fixture {
        let mut lab = Lab::new();
        let db = lab.pkg(
            0,
            &m("db", "1.0.0", r#""services":[{"name":"db"}]"#),
            &[("bin/db", "1")],
        );
        let web1 = lab.pkg(0, &m("web", "1.0.0", HEALTH), &[("bin/web", "1")]);
        let web2 = lab.pkg(0, &m("web", "2.0.0", HEALTH), &[("bin/web", "2")]);
        let dir = tempfile::tempdir().unwrap();
        let paths = LayerPaths::new(dir.path());
        let v1 = vec![db.clone(), web1];
        let v2 = vec![db, web2];
        commit(&paths, &v1);
        Fixture {
            _lab: lab,
            _dir: dir,
            paths,
            v1,
            v2,
        }
    }

    fn commit(paths: &LayerPaths, set: &[Candidate]) -> u64 {
        let files: HashMap<_, _> = set.iter().map(|c| (c.id(), c.path.clone())).collect();
        generation::commit(
            paths,
            crate::stack::list_of(set),
            "install test",
            "t",
            &|id| files.get(id).cloned(),
        )
        .unwrap()
    }

    /// The daemon, following switches: copies `active.list` to `state/served` every 10 ms,
    /// `rounds` times.
    fn follow(paths: &LayerPaths, rounds: u32) -> std::thread::JoinHandle<()> {
        let paths = paths.clone();
        std::thread::spawn(move || {
            for _ in 0..rounds {
                if let Ok(t) = fs::read(paths.active_list()) {
                    let _ = fs::write(paths.served(), t);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    fn graph(set: &[Candidate]) -> crate::Graph {
        crate::check(&["system".into()], set).unwrap()
    }

    fn opts(dir: &Path) -> Options {
        Options {
            view: dir.to_owned(),
            served_timeout: Duration::from_secs(2),
            fault: None,
        }
    }

    fn active(paths: &LayerPaths) -> u64 {
        generation::read_list(&paths.active_list())
            .unwrap()
            .unwrap()
            .generation()
            .unwrap()
    }

    fn kinds(paths: &LayerPaths) -> Vec<String> {
        journal::read(paths)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    #[test]
    fn a_healthy_update_stops_switches_starts_and_checks_only_what_changed() {
        let f = fixture();
        let mut sm = Script {
            paths: Some(f.paths.clone()),
            ..Script::default()
        };
        sm.serve();
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let mut u = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .unwrap();
        assert!(
            f.paths.transaction().exists(),
            "the plan is on disk before the switch"
        );
        let n = commit(&f.paths, &f.v2);
        sm.serve();
        u.switched(n).unwrap();
        let out = u.finish(&mut sm).unwrap();
        assert_eq!(out.failure, None);
        let check = format!("check {}", f.paths.dir.join("bin/check").display());
        assert_eq!(
            sm.ops,
            [
                "stop web.service",
                "reload",
                "start web.service (web-2.0.0)",
                check.as_str()
            ]
        );
        assert_eq!(active(&f.paths), 2);
        assert!(!f.paths.transaction().exists());
        let rec = journal::read(&f.paths).unwrap().records.pop().unwrap();
        assert_eq!(
            (rec.kind.as_str(), rec.verdict.as_str()),
            ("update", "healthy")
        );
        let names: Vec<&str> = rec.checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(names, ["start", "ready", "health", "stable"]);
        assert!(rec.checks.iter().all(|c| c.ok));
        assert_eq!(rec.stopped, ["web.service"]);
        assert_eq!(rec.started, ["web.service"]);
    }

    #[test]
    fn a_service_that_dies_in_its_stability_window_is_rolled_back_and_the_old_one_checked() {
        let f = fixture();
        let mut sm = Script {
            paths: Some(f.paths.clone()),
            dies: Some(("web-2.0.0".into(), 3)),
            ..Script::default()
        };
        sm.serve();
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let mut u = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .unwrap();
        let n = commit(&f.paths, &f.v2);
        sm.serve();
        u.switched(n).unwrap();
        // The daemon follows the switch back as soon as it is written.
        let follower = follow(&f.paths, 200);
        let out = u.finish(&mut sm).unwrap();
        follower.join().unwrap();
        let why = out.failure.expect("rolled back");
        assert!(why.starts_with("web.service: stable: it stopped"), "{why}");
        assert!(why.contains("result exit-code, status 1"), "{why}");
        assert_eq!(active(&f.paths), 1, "the machine ends where it started");
        assert!(
            sm.ops
                .contains(&"start web.service (web-1.0.0)".to_string()),
            "{:?}",
            sm.ops
        );
        assert_eq!(sm.ops.iter().filter(|o| o.starts_with("stop")).count(), 2);
        assert!(!f.paths.transaction().exists());
        let rec = journal::read(&f.paths).unwrap().records.pop().unwrap();
        assert_eq!(rec.kind, "health-rollback");
        assert_eq!(rec.verdict, "rolled-back");
        assert_eq!((rec.before, rec.after), (Some(2), Some(1)));
        assert!(rec.checks.iter().any(|c| c.check == "stable" && !c.ok));
        assert!(rec
            .checks
            .iter()
            .any(|c| c.check == "rollback stable" && c.ok));
        assert!(
            rec.reason.contains("update web: web.service: stable"),
            "{}",
            rec.reason
        );
    }

    #[test]
    fn a_failing_health_command_is_retried_until_the_deadline_then_rolled_back() {
        let f = fixture();
        let mut sm = Script {
            paths: Some(f.paths.clone()),
            failing_check: Some("bin/check".into()),
            ..Script::default()
        };
        sm.serve();
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let mut u = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .unwrap();
        let n = commit(&f.paths, &f.v2);
        sm.serve();
        u.switched(n).unwrap();
        // The old version's check fails too: the record says so.
        let follower = follow(&f.paths, 600);
        let out = u.finish(&mut sm).unwrap();
        follower.join().unwrap();
        let why = out.failure.unwrap();
        assert!(
            why.starts_with(
                "web.service: health: not healthy 2s after its start (last: exit status 1)"
            ),
            "{why}"
        );
        assert!(sm.ops.iter().filter(|o| o.starts_with("check")).count() > 3);
        assert_eq!(active(&f.paths), 1);
        let rec = journal::read(&f.paths).unwrap().records.pop().unwrap();
        assert!(
            rec.verdict
                .starts_with("rolled-back, but the old services are not healthy"),
            "{}",
            rec.verdict
        );
    }

    #[test]
    fn an_update_killed_after_the_switch_is_undone_by_the_next_run() {
        let f = fixture();
        let mut sm = Script {
            paths: Some(f.paths.clone()),
            ..Script::default()
        };
        sm.serve();
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let mut u = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .unwrap();
        let n = commit(&f.paths, &f.v2);
        u.switched(n).unwrap();
        // While it runs, another run sees it running.
        assert!(matches!(pending(&f.paths).unwrap(), Pending::Running(_)));
        let again = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        );
        assert!(again.err().unwrap().starts_with("another update of"));
        drop(u); // the process dies: its lock goes, its record stays
        let Pending::Interrupted(t, lock) = pending(&f.paths).unwrap() else {
            panic!("not seen as interrupted")
        };
        assert_eq!((t.phase, t.to), (Phase::Switched, Some(2)));
        sm.ops.clear();
        let follower = follow(&f.paths, 100);
        let rec = recover(
            &f.paths,
            t,
            lock,
            Some(&mut sm),
            &opts(&f.paths.dir),
            "by pkgtool",
        )
        .unwrap();
        follower.join().unwrap();
        assert_eq!(active(&f.paths), 1);
        assert_eq!(
            sm.ops,
            [
                "stop web.service",
                "reload",
                "start web.service (web-1.0.0)"
            ]
        );
        assert_eq!(rec.verdict, "undone");
        assert!(
            rec.reason.contains("after switching to generation 2"),
            "{}",
            rec.reason
        );
        assert!(matches!(pending(&f.paths).unwrap(), Pending::None));
        assert_eq!(kinds(&f.paths).last().unwrap(), "interrupted-update");
    }

    #[test]
    fn an_update_cut_by_a_power_loss_is_undone_at_boot() {
        let f = fixture();
        let mut sm = Script {
            paths: Some(f.paths.clone()),
            ..Script::default()
        };
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let mut u = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .unwrap();
        let n = commit(&f.paths, &f.v2);
        u.switched(n).unwrap();
        drop(u);
        let msg = undo_at_boot(&f.paths).unwrap();
        assert!(msg.contains("generation 1 is active again"), "{msg}");
        assert_eq!(active(&f.paths), 1);
        assert!(!f.paths.transaction().exists());
        let rec = journal::read(&f.paths).unwrap().records.pop().unwrap();
        assert_eq!(
            (rec.kind.as_str(), rec.before, rec.after),
            ("interrupted-update", Some(2), Some(1))
        );
        assert_eq!(rec.added, ["web-1.0.0"]);
        assert!(undo_at_boot(&f.paths).is_none(), "once");
    }

    #[test]
    fn a_service_that_will_not_stop_aborts_the_update_before_any_switch() {
        struct Stuck(Script);
        impl Services for Stuck {
            fn stop(&mut self, u: &str) -> Result<(), String> {
                self.0.ops.push(format!("stop {u}"));
                if u == "web.service" {
                    Err("timed out".into())
                } else {
                    Ok(())
                }
            }
            fn start(&mut self, u: &str) -> Result<(), String> {
                self.0.start(u)
            }
            fn reload(&mut self) -> Result<(), String> {
                self.0.reload()
            }
            fn state(&mut self, u: &str) -> Result<UnitState, String> {
                self.0.state(u)
            }
            fn check(&mut self, a: &[String], t: Duration) -> Result<(), String> {
                self.0.check(a, t)
            }
        }
        let f = fixture();
        let mut sm = Stuck(Script {
            paths: Some(f.paths.clone()),
            ..Script::default()
        });
        let p = plan(&f.v1, &graph(&f.v1), &f.v2, &graph(&f.v2));
        let e = Update::begin(
            &f.paths,
            &p,
            Some(1),
            "update web",
            opts(&f.paths.dir),
            &mut sm,
        )
        .err()
        .unwrap();
        assert_eq!(e, "web.service: stop failed: timed out");
        assert!(!f.paths.transaction().exists());
        assert_eq!(active(&f.paths), 1);
    }
}
