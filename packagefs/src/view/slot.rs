//! The current view, shared by the FUSE workers (which load it once per request) and the
//! live updater (which replaces it whole: a request sees the old view or the new one).
//!
//! Readers never wait: the slot is an [`ArcSwap`] of an immutable snapshot (the current
//! view, its epoch and the last few replaced), so a load is a few atomic operations
//! whatever the updater does. Swaps are serialized among themselves only.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::View;

/// Views replaced most recently, kept so that a directory listing begun in one of them
/// goes on in it (the FUSE adapter's `dir_at`).
const KEEP_EARLIER: usize = 2;

/// Bits of an epoch: epochs count modulo `1 << EPOCH_BITS` (a directory offset carries
/// the epoch of the view it lists in its top bits).
pub const EPOCH_BITS: u32 = 24;
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;

struct Views {
    epoch: u32,
    current: Arc<View>,
    /// (epoch, view), most recently replaced first.
    earlier: Vec<(u32, Arc<View>)>,
}

struct Inner {
    views: ArcSwap<Views>,
    /// Held by a swap: two swaps at once would lose one's view from `earlier`.
    swapping: Mutex<()>,
}

/// The current view and the last few replaced, each with its epoch.
#[derive(Clone)]
pub struct ViewSlot(Arc<Inner>);

impl ViewSlot {
    /// A slot holding `view`.
    pub fn new(view: View) -> ViewSlot {
        ViewSlot(Arc::new(Inner {
            views: ArcSwap::from_pointee(Views {
                epoch: 0,
                current: Arc::new(view),
                earlier: Vec::new(),
            }),
            swapping: Mutex::new(()),
        }))
    }

    /// The current view.
    pub fn load(&self) -> Arc<View> {
        self.0.views.load().current.clone()
    }

    /// The current view and its epoch.
    pub fn load_epoch(&self) -> (u32, Arc<View>) {
        let v = self.0.views.load();
        (v.epoch, v.current.clone())
    }

    /// The view of `epoch`, if it is current or among the last few replaced.
    pub fn get(&self, epoch: u32) -> Option<Arc<View>> {
        let v = self.0.views.load();
        if v.epoch == epoch {
            return Some(v.current.clone());
        }
        v.earlier
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, v)| v.clone())
    }

    /// Makes `view` current; returns the one it replaces.
    pub fn swap(&self, view: View) -> Arc<View> {
        let _one = self.0.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let v = self.0.views.load_full();
        let mut earlier = Vec::with_capacity(KEEP_EARLIER);
        earlier.push((v.epoch, v.current.clone()));
        earlier.extend(v.earlier.iter().take(KEEP_EARLIER - 1).cloned());
        self.0.views.store(Arc::new(Views {
            epoch: (v.epoch + 1) & EPOCH_MASK,
            current: Arc::new(view),
            earlier,
        }));
        v.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Layer;

    fn empty() -> View {
        View::build(vec![Layer::new("system")], Vec::new())
    }

    #[test]
    fn swaps_keep_the_last_few_views_by_epoch() {
        let slot = ViewSlot::new(empty());
        let (e0, v0) = slot.load_epoch();
        let old = slot.swap(empty());
        assert!(Arc::ptr_eq(&old, &v0));
        let (e1, v1) = slot.load_epoch();
        assert_eq!(e1, e0 + 1);
        slot.swap(empty());
        // The current view and the two replaced last are reachable by epoch.
        assert!(Arc::ptr_eq(&slot.get(e0).unwrap(), &v0));
        assert!(Arc::ptr_eq(&slot.get(e1).unwrap(), &v1));
        assert!(Arc::ptr_eq(&slot.get(e1 + 1).unwrap(), &slot.load()));
        slot.swap(empty());
        assert!(
            slot.get(e0).is_none(),
            "only the last {KEEP_EARLIER} are kept"
        );
        assert!(slot.get(e1).is_some());
    }

    #[test]
    fn readers_never_see_an_older_view_after_a_newer_one_while_views_are_swapped() {
        let slot = ViewSlot::new(empty());
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (slot, done) = (slot.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..20_000 {
                        let (e, v) = slot.load_epoch();
                        assert!(e >= last, "epoch {e} after {last}");
                        last = e;
                        // The view of the epoch just loaded is that view (or it has gone
                        // out of the last few already).
                        if let Some(w) = slot.get(e) {
                            assert!(Arc::ptr_eq(&v, &w));
                        }
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        let mut swaps = 0;
        while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            slot.swap(empty());
            swaps += 1;
        }
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(slot.load_epoch().0, swaps);
    }
}
