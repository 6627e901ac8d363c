//! Watching the layers (inotify): each layer's `packages/` for package files copied, moved,
//! hard-linked in or deleted, and `state/` for `active.list` being replaced. Events are
//! gathered into batches: after the first one, the watcher waits until the directory has
//! been quiet for a moment, so a burst (a copy of several packages) becomes one change.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use pkgset::Stack;

use crate::live::{Event, Live};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Packages,
    State,
}

/// The inotify watches of a stack.
pub struct Watcher {
    inotify: Inotify,
    wds: HashMap<WatchDescriptor, (usize, Dir)>,
    buf: Vec<u8>,
}

impl Watcher {
    /// Watches `packages/` and `state/` of every layer.
    pub fn new(stack: &Stack) -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mut wds = HashMap::new();
        for (l, spec) in stack.layers.iter().enumerate() {
            let pk = spec.paths.packages();
            let st = spec.paths.state();
            std::fs::create_dir_all(&pk)?;
            std::fs::create_dir_all(&st)?;
            let wd = inotify.watches().add(
                &pk,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )?;
            wds.insert(wd, (l, Dir::Packages));
            let wd = inotify.watches().add(
                &st,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::DELETE_SELF,
            )?;
            wds.insert(wd, (l, Dir::State));
        }
        Ok(Watcher {
            inotify,
            wds,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Blocks until something happens, then gathers events until none came for `quiet`
    /// (at most `max` in all). Returns the batch.
    pub fn next_batch(&mut self, quiet: Duration, max: Duration) -> io::Result<Vec<Event>> {
        let mut out = Vec::new();
        // Events that mean nothing (the lock file, temp files) do not make a batch: the
        // daemon's own writes would otherwise wake it again and again.
        while out.is_empty() {
            self.read(&mut out, true)?;
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
                tracing::error!(
                    layer,
                    "a watched directory of the layer was deleted or moved; changes to it are no longer seen until the next mount"
                );
                continue;
            }
            let Some(name) = ev.name else { continue };
            match dir {
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
