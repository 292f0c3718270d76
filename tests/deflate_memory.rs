//! Heap cost of permessage-deflate's state, measured with a counting allocator (its own test
//! binary, so the allocator counts nothing else): the process-wide compressor and inflater,
//! and what one connection holds idle and while a compressed message is in flight.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use wschat::deflate::{Compressor, DEFAULT_LEVEL, InboundInflate, Inflater};

thread_local! {
    /// Bytes allocated minus bytes freed by this thread: the test harness allocates on other
    /// threads at any time, so a process-wide count would not be exact.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: a thread being torn down may still free memory.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes `make` leaves allocated in the value it returns.
fn heap_of<T>(make: impl FnOnce() -> T) -> (T, isize) {
    let before = live();
    let value = make();
    (value, live() - before)
}

#[test]
fn compressor_and_inflater_sizes() {
    let (mut compressor, compressor_heap) = heap_of(|| Compressor::new(DEFAULT_LEVEL));
    let (mut inflater, inflater_heap) = heap_of(|| Inflater::new(1 << 20));
    println!(
        "compressor: {compressor_heap} B heap + {} B inline; inflater: {inflater_heap} B heap + {} B inline",
        std::mem::size_of::<Compressor>(),
        std::mem::size_of::<Inflater>()
    );
    // One of each per process: a few hundred KiB for the compressor, ~11 KiB for the inflater.
    assert!(compressor_heap < 400 << 10, "{compressor_heap}");
    assert!(inflater_heap < 16 << 10, "{inflater_heap}");
    // Using them keeps nothing more between messages.
    let payload = "{\"text\":\"hello hello hello\"}".repeat(100).into_bytes();
    let before = live();
    for _ in 0..3 {
        let compressed = compressor.compress(&payload).expect("compressible");
        assert_eq!(inflater.inflate(&compressed).expect("valid"), payload);
    }
    assert_eq!(live(), before);
}

#[test]
fn an_idle_connection_holds_nothing_on_the_heap() {
    let (transform, heap) = heap_of(|| InboundInflate::new(true));
    println!(
        "per connection: {} B inline, {heap} B heap",
        std::mem::size_of::<InboundInflate>()
    );
    assert_eq!(heap, 0);
    assert_eq!(transform.held_bytes(), 0);
}
