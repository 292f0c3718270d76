//! Heap cost of permessage-deflate's state, measured with a counting allocator (its own test
//! binary, so the allocator counts nothing else): the process-wide compressor and inflater,
//! and what one connection holds idle and while a compressed message is in flight.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

use wschat::deflate::{Compressor, DEFAULT_LEVEL, InboundInflate, Inflater};

/// Bytes currently allocated by the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// One measurement at a time: the test harness runs tests on several threads.
static SERIAL: Mutex<()> = Mutex::new(());

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes `make` leaves allocated in the value it returns.
fn heap_of<T>(make: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE.load(Ordering::SeqCst);
    let value = make();
    (value, LIVE.load(Ordering::SeqCst) - before)
}

#[test]
fn compressor_and_inflater_sizes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..3 {
        let compressed = compressor.compress(&payload).expect("compressible");
        assert_eq!(inflater.inflate(&compressed).expect("valid"), payload);
    }
    assert_eq!(LIVE.load(Ordering::SeqCst), before);
}

#[test]
fn an_idle_connection_holds_nothing_on_the_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (transform, heap) = heap_of(|| InboundInflate::new(true));
    println!(
        "per connection: {} B inline, {heap} B heap",
        std::mem::size_of::<InboundInflate>()
    );
    assert_eq!(heap, 0);
    assert_eq!(transform.held_bytes(), 0);
}
