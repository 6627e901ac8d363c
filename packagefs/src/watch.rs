//! Watching the layers (inotify): each layer's `packages/` for package files copied, moved,
//! hard-linked in or deleted, and `state/` for `active.list` being replaced. Events are
//! gathered into batches: after the first one, the watcher waits until the directory has
//! been quiet for a moment, so a burst (a copy of several packages) becomes one change.
//!
//! The layer directory itself is watched too: when `packages/` or `state/` is deleted,
//! moved away or replaced, its watch is dropped and set up again as soon as the directory
//! is back (and a rescan is asked for), so a layer never goes deaf until a remount.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use pkgset::Stack;

use crate::live::{Event, Live};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Packages,
    State,
    Layer,
}

/// The inotify watches of a stack.
pub struct Watcher {
    inotify: Inotify,
    wds: HashMap<WatchDescriptor, (usize, Dir)>,
    /// Per layer: its directory, and whether `packages/` and `state/` are watched.
    layers: Vec<(PathBuf, bool, bool)>,
    buf: Vec<u8>,
}

fn packages_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

fn state_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

impl Watcher {
    /// Watches `packages/` and `state/` of every layer, and each layer directory for them
    /// coming back.
    pub fn new(stack: &Stack) -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mut w = Watcher {
            inotify,
            wds: HashMap::new(),
            layers: Vec::new(),
            buf: vec![0; 64 * 1024],
        };
        for (l, spec) in stack.layers.iter().enumerate() {
            {
                // Made with the rights of the layer's owner, and so owned by them.
                let _as = pkgset::owner::AsOwner::enter(&spec.paths);
                std::fs::create_dir_all(spec.paths.packages())?;
                std::fs::create_dir_all(spec.paths.state())?;
            }
            let wd = w.inotify.watches().add(
                &spec.paths.dir,
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
            )?;
            w.wds.insert(wd, (l, Dir::Layer));
            w.layers.push((spec.paths.dir.clone(), false, false));
            if !w.rewatch(l) || !w.layers[l].1 || !w.layers[l].2 {
                tracing::warn!(
                    layer = %spec.name,
                    "packages/ or state/ of {} is not a directory of its own; watching for one",
                    spec.paths.dir.display()
                );
            }
        }
        Ok(w)
    }

    /// Sets up the watches of layer `l`'s `packages/` and `state/` that are missing.
    /// Returns true if one was set up.
    fn rewatch(&mut self, l: usize) -> bool {
        let mut added = false;
        let dir = self.layers[l].0.clone();
        for (which, name, mask) in [
            (Dir::Packages, "packages", packages_mask()),
            (Dir::State, "state", state_mask()),
        ] {
            let have = if which == Dir::Packages {
                self.layers[l].1
            } else {
                self.layers[l].2
            };
            if have {
                continue;
            }
            // ONLYDIR, and the daemon never follows a symlink named like them: lstat first.
            let path = dir.join(name);
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Ok(wd) = self
                .inotify
                .watches()
                .add(&path, mask | WatchMask::DONT_FOLLOW)
            {
                self.wds.insert(wd, (l, which));
                if which == Dir::Packages {
                    self.layers[l].1 = true;
                } else {
                    self.layers[l].2 = true;
                }
                added = true;
            }
        }
        added
    }

    /// True if a watch of some layer is missing (its directory is gone).
    pub fn missing(&self) -> bool {
        self.layers.iter().any(|(_, p, s)| !p || !s)
    }

    /// Blocks until something happens, then gathers events until none came for `quiet`
    /// (at most `max` in all). Returns the batch. With `retry`, a batch of one
    /// [`Event::Rescan`] comes after that long without events (the caller has something
    /// to look at again); a missing watch is tried again every time.
    pub fn next_batch(
        &mut self,
        quiet: Duration,
        max: Duration,
        retry: Option<Duration>,
    ) -> io::Result<Vec<Event>> {
        let mut out = Vec::new();
        // Events that mean nothing (the lock file, temp files) do not make a batch: the
        // daemon's own writes would otherwise wake it again and again.
        while out.is_empty() {
            let wait = if self.missing() {
                Some(retry.unwrap_or(Duration::from_secs(2)))
            } else {
                retry
            };
            if let Some(wait) = wait {
                if !self.poll(wait)? {
                    for l in 0..self.layers.len() {
                        self.rewatch(l);
                    }
                    return Ok(vec![Event::Rescan]);
                }
            }
            self.read(&mut out, wait.is_none())?;
        }
        let start = Instant::now();
        loop {
            let left = max.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            if !self.poll(quiet.min(left))? {
                break;
            }
            self.read(&mut out, false)?;
        }
        Ok(out)
    }

    /// True if events are ready within `timeout`.
    fn poll(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            };
        }
        Ok(r > 0)
    }

    fn read(&mut self, out: &mut Vec<Event>, block: bool) -> io::Result<()> {
        let events = if block {
            self.inotify.read_events_blocking(&mut self.buf)?
        } else {
            match self.inotify.read_events(&mut self.buf) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        let events: Vec<inotify::Event<std::ffi::OsString>> =
            events.map(|e| e.to_owned()).collect();
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                out.push(Event::Rescan);
                continue;
            }
            let Some(&(layer, dir)) = self.wds.get(&ev.wd) else {
                continue;
            };
            if ev
                .mask
                .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
            {
                if dir == Dir::Layer {
                    tracing::error!(layer, "the layer directory was deleted or moved; its changes are no longer seen until the next mount");
                    continue;
                }
                // Moved away, the watch would follow the directory: drop it and watch the
                // path again once a directory is there.
                let _ = self.inotify.watches().remove(ev.wd.clone());
                self.wds.remove(&ev.wd);
                let name = if dir == Dir::Packages {
                    self.layers[layer].1 = false;
                    "packages/"
                } else {
                    self.layers[layer].2 = false;
                    "state/"
                };
                tracing::warn!(
                    layer,
                    "{name} of the layer was deleted or moved; watching for it to come back"
                );
                self.rewatch(layer);
                out.push(Event::Rescan);
                continue;
            }
            let Some(name) = ev.name.as_deref() else {
                continue;
            };
            match dir {
                Dir::Layer => {
                    if name == "packages" || name == "state" {
                        // Back: watch it, look at everything. (A directory moved over a
                        // watched one: the old one's DELETE_SELF comes, and rewatches then.)
                        self.rewatch(layer);
                        out.push(Event::Rescan);
                    }
                }
                Dir::Packages => {
                    if !Live::watches(name) {
                        continue;
                    }
                    let name = name.to_owned();
                    if ev
                        .mask
                        .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
                    {
                        out.push(Event::Removed { layer, name });
                    } else if ev
                        .mask
                        .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                    {
                        out.push(Event::Added {
                            layer,
                            name,
                            complete: true,
                        });
                    } else if ev.mask.contains(EventMask::CREATE) {
                        out.push(Event::Added {
                            layer,
                            name,
                            complete: false,
                        });
                    }
                }
                Dir::State => {
                    if name == "active.list" {
                        out.push(Event::ListChanged { layer });
                    }
                }
            }
        }
        Ok(())
    }
}
