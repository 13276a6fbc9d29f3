//! A global allocator that keeps freed tensor-sized blocks for the next request of a similar
//! size, so that a training step stops paying the kernel to map, zero and unmap every activation
//! and gradient (measured on the seed model's CPU step: 33 % of its CPU time was kernel time with
//! each block of 1 MiB or more mapped on its own; decision 0008).
//!
//! - Blocks of at least [`MIN_POOLED_BYTES`] (alignment ≤ [`POOL_ALIGN`]) are rounded up to a
//!   size class (eight per power of two) and allocated from the system allocator at the class
//!   size, behind a small header that records the class. Smaller blocks go straight to the
//!   system allocator (glibc's heap).
//! - A freed pooled block is cached (up to [`SLOTS`] per class). A request takes a cached block of
//!   its class or up to half a power of two larger; otherwise the pool asks the system for a new
//!   block, and first gives cached blocks back until live + cached + the new block fit within
//!   the peak of live blocks plus the slack ([`set_slack_percent`] of that peak). So the pool adds
//!   at most that share to the peak RSS — 0 % reuses only what never raises it.
//! - When a block must be given back to make room for a new one, its pages are reused instead:
//!   on Linux the pool maps its blocks itself and resizes the victim to the new class with
//!   `mremap`, so only the difference in size is mapped fresh (and zeroed by the kernel) or
//!   released. Half-precision steps, whose f32 copies come in other sizes than their bf16
//!   tensors, missed their classes often and paid a fresh, zeroed mapping every time.
//! - The cache is memory vidtrain holds: it is resident, it is in every RSS figure the program
//!   prints, and it is counted ([`stats`]: bytes cached now and at most, hits and misses).
//!   [`release_cached`] gives it all back.
//!
//! The pool is a fixed table behind one mutex: allocating inside the allocator is impossible, and
//! blocks of a megabyte and more are few enough (thousands per step) that the lock is not felt.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Blocks this large and larger are pooled; smaller ones are glibc's heap's business.
pub const MIN_POOLED_BYTES: usize = 1 << 20;
/// Every pooled block is allocated with this alignment: two cache lines, what gemm's packing
/// buffers ask for (`gemm_common::CACHELINE_ALIGN`). At 64, those buffers — megabytes, one per
/// matrix product — went to the system allocator, each a fresh mapping the kernel zeroed and
/// then unmapped with a TLB shootdown (an r3d_18 step: 9 % of its time in those page faults).
pub const POOL_ALIGN: usize = 128;
/// Size classes per power of two.
const CLASSES_PER_OCTAVE: usize = 8;
/// Octaves from 1 MiB (2^20) up to 2^44 bytes; larger requests are not pooled.
const OCTAVES: usize = 24;
const CLASSES: usize = OCTAVES * CLASSES_PER_OCTAVE;
/// Blocks kept per class (a step's activations of one shape are many, but a class's blocks
/// beyond this number go back to the system).
pub const SLOTS: usize = 32;

/// The allocator: declare it with `#[global_allocator]` in a binary.
pub struct ReusePool;

struct Cache {
    /// Base addresses of the cached blocks of each class; the first `counts[class]` are valid.
    blocks: [[usize; SLOTS]; CLASSES],
    counts: [u8; CLASSES],
}

impl Cache {
    /// The last cached block of `class` (which has one), out of the table; the caller accounts
    /// for it in `CACHED`.
    fn pop(&mut self, class: usize) -> *mut u8 {
        self.counts[class] -= 1;
        self.blocks[class][usize::from(self.counts[class])] as *mut u8
    }
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [[0; SLOTS]; CLASSES],
    counts: [0; CLASSES],
});
static SLACK_PERCENT: AtomicUsize = AtomicUsize::new(0);
/// Bytes of pooled blocks handed out and not yet freed (at their class sizes), and their peak.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE: AtomicUsize = AtomicUsize::new(0);
static CACHED: AtomicUsize = AtomicUsize::new(0);
static PEAK_CACHED: AtomicUsize = AtomicUsize::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static RECYCLED: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// What the pool did since the start or the last [`reset_peak`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Whether this process allocates through the pool at all.
    pub active: bool,
    /// How much the pool may add to the peak of live blocks, in percent of it.
    pub slack_percent: u64,
    /// The most bytes of pooled blocks in use at once.
    pub peak_live_bytes: u64,
    /// Freed bytes kept for reuse now (resident, part of RSS).
    pub cached_bytes: u64,
    /// The most bytes kept at once.
    pub peak_cached_bytes: u64,
    /// Pooled requests served from the cache (no system call, no page faults).
    pub hits: u64,
    /// Pooled requests that went to the system.
    pub misses: u64,
    /// Misses served by resizing a cached block given up for room (its pages reused).
    pub recycled: u64,
}

/// Sets how much the pool may add to the peak RSS, in percent of the peak of live pooled blocks
/// (0: the pool reuses blocks only where that never raises the peak).
pub fn set_slack_percent(percent: usize) {
    SLACK_PERCENT.store(percent, Ordering::Relaxed);
}

/// The pool's counters.
pub fn stats() -> PoolStats {
    PoolStats {
        active: ACTIVE.load(Ordering::Relaxed),
        slack_percent: SLACK_PERCENT.load(Ordering::Relaxed) as u64,
        peak_live_bytes: PEAK_LIVE.load(Ordering::Relaxed) as u64,
        cached_bytes: CACHED.load(Ordering::Relaxed) as u64,
        peak_cached_bytes: PEAK_CACHED.load(Ordering::Relaxed) as u64,
        hits: HITS.load(Ordering::Relaxed),
        misses: MISSES.load(Ordering::Relaxed),
        recycled: RECYCLED.load(Ordering::Relaxed),
    }
}

/// Starts the counters of a new phase: the peaks become the bytes cached and live now, hits and
/// misses 0.
pub fn reset_peak() {
    PEAK_CACHED.store(CACHED.load(Ordering::Relaxed), Ordering::Relaxed);
    PEAK_LIVE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    HITS.store(0, Ordering::Relaxed);
    MISSES.store(0, Ordering::Relaxed);
    RECYCLED.store(0, Ordering::Relaxed);
}

/// Gives every cached block back to the system; returns the bytes released.
pub fn release_cached() -> u64 {
    let mut released = 0u64;
    let mut cache = lock();
    for class in 0..CLASSES {
        let count = usize::from(cache.counts[class]);
        if count == 0 {
            continue;
        }
        for slot in 0..count {
            let block = cache.blocks[class][slot] as *mut u8; // a base address
            // SAFETY: every cached address is a block of `class` mapped by `blocks::map`, owned
            // by the cache alone.
            unsafe { blocks::unmap(block, class) };
            released += class_size(class) as u64;
        }
        cache.counts[class] = 0;
    }
    CACHED.fetch_sub(released as usize, Ordering::Relaxed);
    released
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while the lock is held cannot leave the table inconsistent (each change is a
    // count and an address written together), so a poisoned lock is still usable.
    CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The size class of a pooled request, `None` when the request is not pooled.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size < MIN_POOLED_BYTES || layout.align() > POOL_ALIGN {
        return None;
    }
    let octave = (usize::BITS - 1 - size.leading_zeros()) as usize; // floor(log2(size))
    let base = 1usize << octave;
    let step = base / CLASSES_PER_OCTAVE;
    let sub = (size - base).div_ceil(step); // 0..=8; 8 is the next octave's first class
    let class = (octave - 20) * CLASSES_PER_OCTAVE + sub;
    (class < CLASSES).then_some(class)
}

/// Usable bytes of a block of `class`.
fn class_size(class: usize) -> usize {
    let octave = 20 + class / CLASSES_PER_OCTAVE;
    let base = 1usize << octave;
    base + (class % CLASSES_PER_OCTAVE) * (base / CLASSES_PER_OCTAVE)
}

/// The system allocation behind a block of `class`: a header of [`POOL_ALIGN`] bytes that
/// records the class (a block may serve a request of a smaller class), then the usable bytes.
fn class_layout(class: usize) -> Layout {
    // The class sizes are multiples of 128 KiB, far from overflow; the alignment is a power of 2.
    Layout::from_size_align(class_size(class) + POOL_ALIGN, POOL_ALIGN)
        .expect("a valid size class layout")
}

/// Where pooled blocks come from. On Linux: anonymous mappings of their own (page-aligned, so
/// aligned to [`POOL_ALIGN`]), which `mremap` resizes keeping their pages; elsewhere the system
/// allocator, and no resizing.
mod blocks {
    use super::class_layout;

    /// A new block of `class` (zeroed), or null.
    #[cfg(target_os = "linux")]
    pub(super) fn map(class: usize) -> *mut u8 {
        use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous};
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
        // aliases nothing.
        unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                class_layout(class).size(),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_or(std::ptr::null_mut(), |base| base.cast())
    }

    /// Gives the block of `class` at `base` back.
    ///
    /// # Safety
    /// `base` is a block of `class` from [`map`] or [`resize`] that nobody uses any more.
    #[cfg(target_os = "linux")]
    pub(super) unsafe fn unmap(base: *mut u8, class: usize) {
        // SAFETY: the caller's guarantees; failure would leave the mapping, nothing unsound.
        let _ = unsafe { rustix::mm::munmap(base.cast(), class_layout(class).size()) };
    }

    /// The block of `from` at `base` made a block of `to` keeping its pages (moved if it must
    /// grow where it cannot), or `None` (the block is left as it was).
    ///
    /// # Safety
    /// `base` is a block of `from` from [`map`] or [`resize`] that nobody uses any more.
    #[cfg(target_os = "linux")]
    pub(super) unsafe fn resize(base: *mut u8, from: usize, to: usize) -> Option<*mut u8> {
        use rustix::mm::{MremapFlags, mremap};
        // SAFETY: the caller's guarantees: a whole mapping of ours, page-aligned.
        unsafe {
            mremap(
                base.cast(),
                class_layout(from).size(),
                class_layout(to).size(),
                MremapFlags::MAYMOVE,
            )
        }
        .ok()
        .map(|base| base.cast())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn map(class: usize) -> *mut u8 {
        use std::alloc::GlobalAlloc;
        // SAFETY: the layout has a non-zero size.
        unsafe { std::alloc::System.alloc_zeroed(class_layout(class)) }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) unsafe fn unmap(base: *mut u8, class: usize) {
        use std::alloc::GlobalAlloc;
        // SAFETY: the caller's guarantees; allocated by `map` with this layout.
        unsafe { std::alloc::System.dealloc(base, class_layout(class)) };
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) unsafe fn resize(_base: *mut u8, _from: usize, _to: usize) -> Option<*mut u8> {
        None
    }
}

/// A block as the caller sees it: past the header.
fn user_pointer(base: *mut u8) -> *mut u8 {
    // SAFETY (of the offset): every base is the start of an allocation of more than POOL_ALIGN
    // bytes.
    base.wrapping_add(POOL_ALIGN)
}

/// The class written in the header of the block at `user` (a pointer this pool handed out).
fn class_of_block(user: *mut u8) -> usize {
    let base = user.wrapping_sub(POOL_ALIGN);
    // SAFETY: `user` was handed out by `pooled_alloc`, which wrote the class at `base`
    // (aligned to POOL_ALIGN, so to usize).
    unsafe { base.cast::<usize>().read() }
}

/// A cached block of `class` or of a class up to [`REUSE_SPAN`] classes larger (at most 1.5× the
/// size), the smallest there is; its base address and its class.
fn take_cached(class: usize) -> Option<(*mut u8, usize)> {
    take_first(class..=class + REUSE_SPAN)
}

/// A cached block within an octave of `class` (the nearest), to be resized for it: its pages
/// are resident already, where a fresh mapping would fault and zero every page.
fn take_nearby(class: usize) -> Option<(*mut u8, usize)> {
    take_first(
        (1..=CLASSES_PER_OCTAVE)
            .flat_map(|distance| [class.checked_sub(distance), Some(class + distance)])
            .flatten(),
    )
}

/// A cached block of the first of `classes` that has one, taken out of the cache; its base
/// address and its class.
fn take_first(classes: impl Iterator<Item = usize>) -> Option<(*mut u8, usize)> {
    let mut cache = lock();
    let found = classes
        .filter(|&class| class < CLASSES)
        .find(|&class| cache.counts[class] > 0)?;
    let base = cache.pop(found);
    CACHED.fetch_sub(class_size(found), Ordering::Relaxed);
    Some((base, found))
}

/// Classes above its own a request may be served from (four eighths of an octave: ≤ 1.5×).
const REUSE_SPAN: usize = 4;

/// Keeps the block at `base` if its class has a free slot; returns whether it was kept.
fn keep(class: usize, base: *mut u8) -> bool {
    let size = class_size(class);
    let mut cache = lock();
    let count = usize::from(cache.counts[class]);
    if count == SLOTS {
        return false;
    }
    cache.blocks[class][count] = base as usize;
    cache.counts[class] += 1;
    let cached = CACHED.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_CACHED.fetch_max(cached, Ordering::Relaxed);
    true
}

/// Makes room for a new block of `bytes`: gives cached blocks back until the pool's footprint
/// (live + cached + the new block) is within the most it has needed for live blocks alone plus
/// the slack ([`set_slack_percent`]). So the pool never raises the peak RSS by more than the
/// slack. Victims: the smallest cached block that covers what is missing, else the largest,
/// again — as little cached memory as possible is given up. The largest victim is not unmapped
/// but returned (base, class) for the new block to be made of its pages.
fn make_room(bytes: usize) -> Option<(*mut u8, usize)> {
    let live = LIVE.load(Ordering::Relaxed) + bytes;
    let peak_live = PEAK_LIVE.fetch_max(live, Ordering::Relaxed).max(live);
    let allowed = peak_live + peak_live / 100 * SLACK_PERCENT.load(Ordering::Relaxed);
    let mut cached = CACHED.load(Ordering::Relaxed);
    if live + cached <= allowed {
        return None;
    }
    let mut recycled: Option<(*mut u8, usize)> = None;
    let mut cache = lock();
    while live + cached > allowed {
        let missing = live + cached - allowed;
        let covering =
            (0..CLASSES).find(|&class| cache.counts[class] > 0 && class_size(class) >= missing);
        let Some(class) =
            covering.or_else(|| (0..CLASSES).rev().find(|&class| cache.counts[class] > 0))
        else {
            break;
        };
        let base = cache.pop(class);
        cached -= class_size(class);
        let unmapped = match recycled {
            Some((_, kept)) if kept >= class => (base, class),
            Some(smaller) => {
                recycled = Some((base, class));
                smaller
            }
            None => {
                recycled = Some((base, class));
                continue;
            }
        };
        // SAFETY: cached blocks were mapped by `blocks::map` with their class and are owned by
        // the cache alone.
        unsafe { blocks::unmap(unmapped.0, unmapped.1) };
    }
    CACHED.store(cached, Ordering::Relaxed);
    recycled
}

fn pooled_alloc(class: usize, zeroed: bool, requested: usize) -> *mut u8 {
    ACTIVE.store(true, Ordering::Relaxed);
    if let Some((base, found)) = take_cached(class) {
        HITS.fetch_add(1, Ordering::Relaxed);
        let live = LIVE.fetch_add(class_size(found), Ordering::Relaxed) + class_size(found);
        PEAK_LIVE.fetch_max(live, Ordering::Relaxed);
        let user = user_pointer(base);
        if zeroed {
            // SAFETY: the block holds at least `class_size(class) >= requested` bytes.
            unsafe { user.write_bytes(0, requested) };
        }
        return user;
    }
    MISSES.fetch_add(1, Ordering::Relaxed);
    let recycled = make_room(class_size(class)).or_else(|| take_nearby(class));
    LIVE.fetch_add(class_size(class), Ordering::Relaxed);
    let base = match recycled {
        // SAFETY: the victim is a block of `from` that the cache gave up and nobody else owns.
        Some((victim, from)) => match unsafe { blocks::resize(victim, from, class) } {
            Some(base) => {
                RECYCLED.fetch_add(1, Ordering::Relaxed);
                if zeroed {
                    // SAFETY: the block holds `class_size(class) >= requested` bytes past its
                    // header; its reused pages hold old data.
                    unsafe { user_pointer(base).write_bytes(0, requested) };
                }
                base
            }
            None => {
                // SAFETY: as above; resizing failed and left the victim as it was.
                unsafe { blocks::unmap(victim, from) };
                blocks::map(class)
            }
        },
        // Fresh mappings are zeroed by the kernel.
        None => blocks::map(class),
    };
    if base.is_null() {
        LIVE.fetch_sub(class_size(class), Ordering::Relaxed);
        return base;
    }
    // SAFETY: the allocation starts with POOL_ALIGN (≥ size_of::<usize>()) bytes of header,
    // aligned to POOL_ALIGN.
    unsafe { base.cast::<usize>().write(class) };
    user_pointer(base)
}

fn pooled_dealloc(user: *mut u8) {
    let class = class_of_block(user);
    LIVE.fetch_sub(class_size(class), Ordering::Relaxed);
    let base = user.wrapping_sub(POOL_ALIGN);
    if !keep(class, base) {
        // SAFETY: pooled blocks are mapped by `blocks::map` with their class.
        unsafe { blocks::unmap(base, class) };
    }
}

// SAFETY: every block handed out is either the system allocator's for the caller's own layout
// (not pooled) or part of the system allocator's block of a class layout, past its header, at
// least as large and as aligned as the caller's layout, owned by exactly one party (the caller
// or the cache) at a time. Whether a block is pooled follows from its layout alone, which the
// caller passes unchanged to `dealloc`/`realloc`.
unsafe impl GlobalAlloc for ReusePool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => pooled_alloc(class, false, layout.size()),
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => pooled_alloc(class, true, layout.size()),
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(_) => pooled_dealloc(ptr),
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: forwarded with the caller's guarantees (glibc grows mappings in place).
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            (Some(_), Some(_)) if new_size <= class_size(class_of_block(ptr)) => ptr,
            _ => {
                // SAFETY: `new_layout` is valid (above); the old block holds `layout.size()`
                // bytes and the new one `new_size`; the old block is freed by its own layout.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_every_pooled_size_with_at_most_an_eighth_of_rounding() {
        let mut sizes = vec![
            MIN_POOLED_BYTES,
            MIN_POOLED_BYTES + 1,
            3 << 20,
            (1 << 30) - 1,
        ];
        sizes.extend((0..2000).map(|i| MIN_POOLED_BYTES + i * 77_777));
        for size in sizes {
            let class = class_of(Layout::from_size_align(size, 4).unwrap()).unwrap();
            let rounded = class_size(class);
            assert!(rounded >= size, "{size} → {rounded}");
            assert!(rounded - size <= size / 8, "{size} → {rounded}");
            // The class of a class size is itself (a block freed at its class size would
            // otherwise land in another class).
            assert_eq!(
                class_of(Layout::from_size_align(rounded, 4).unwrap()),
                Some(class)
            );
        }
        assert_eq!(
            class_of(Layout::from_size_align(MIN_POOLED_BYTES - 1, 4).unwrap()),
            None
        );
        assert_eq!(
            class_of(Layout::from_size_align(1 << 21, 4096).unwrap()),
            None
        );
    }

    // The pool is the global allocator of the vidtrain binary (every e2e test and bench runs
    // through it); here its table is driven directly, through the functions `GlobalAlloc` calls.
    // One test owns the pool's statics.
    #[test]
    fn blocks_are_reused_and_the_pool_never_adds_more_than_its_slack_to_the_peak() {
        let _serial = crate::tests::SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mib = |n: usize| n << 20;
        let alloc = |bytes: usize| {
            let class = class_of(Layout::from_size_align(bytes, 4).unwrap()).unwrap();
            pooled_alloc(class, true, bytes)
        };
        release_cached();
        set_slack_percent(0);
        reset_peak();

        let first = alloc(mib(5));
        // SAFETY: the block holds 5 MiB.
        unsafe { first.add(123).write(7) };
        pooled_dealloc(first);
        assert_eq!(
            stats().cached_bytes,
            class_size(class_of_block(first)) as u64
        );
        let again = alloc(mib(5));
        assert_eq!(again, first, "the cached block is handed out again");
        // SAFETY: as above; a zeroed request gets zeros even from the cache.
        assert_eq!(unsafe { again.add(123).read() }, 0);
        pooled_dealloc(again);
        // A slightly smaller request (within half a power of two) takes the same block.
        let smaller = alloc(mib(4) + 1);
        assert_eq!(smaller, first);
        pooled_dealloc(smaller);
        let before = stats();
        assert_eq!(before.hits, 2);
        assert_eq!(before.misses, 1);

        // Slack 0: a request the cache cannot serve first gives back what would lift the
        // footprint (live + cached) above the peak of live blocks: the cached 5 MiB block, whose
        // pages are resized into the new block (no fresh mapping), zeroed as asked.
        let larger = alloc(mib(9));
        let after = stats();
        assert_eq!(after.cached_bytes, 0, "{after:?}");
        assert_eq!(after.recycled, 1, "{after:?}");
        assert!(after.peak_live_bytes >= mib(9) as u64);
        // SAFETY: the block holds 9 MiB.
        unsafe {
            assert_eq!(larger.add(123).read(), 0);
            larger.add(mib(9) - 1).write(1);
        }
        pooled_dealloc(larger);
        // A miss within an octave of a cached block takes that block's pages too.
        let near = alloc(mib(6));
        assert_eq!(stats().recycled, 2);
        assert_eq!(stats().cached_bytes, 0);
        pooled_dealloc(near);

        // Slack 100 %: a miss more than an octave away keeps the cached block, since live +
        // cached + new stays within twice the peak of live blocks.
        set_slack_percent(100);
        let cached = stats().cached_bytes;
        let other = alloc(mib(1));
        assert_eq!(stats().cached_bytes, cached);
        pooled_dealloc(other);
        let cached = stats().cached_bytes;
        assert_eq!(release_cached(), cached);
        assert_eq!(stats().cached_bytes, 0);
        set_slack_percent(0);
    }
}
