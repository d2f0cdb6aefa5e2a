//! Process-wide allocator settings for the engine.
//!
//! Training allocates and frees tensors of the same few sizes every step (activations,
//! gradients, logits of hundreds of MiB). glibc serves blocks above its mmap threshold with
//! fresh `mmap`s and gives freed heap back to the system, so every step pays for page faults
//! and for the kernel zeroing the same memory again (about 12% of a GPT-2-small training step
//! in `perf`). Keeping freed memory in the heap lets the next step reuse it: +35% training
//! tokens/s at the same peak RSS within 3% (docs/performance.md).

/// Serve every allocation from the heap, never trim it, and use one arena (the engine's
/// threads allocate in bursts; more arenas only keep more freed memory around). A no-op
/// outside glibc Linux. Call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // -1 is SIZE_MAX in glibc (the int is taken as a size_t): never trim. i32::MAX would trim
        // whenever 2 GiB at the heap top are free, which a GPT-2-small micro-batch of 8 pairs frees.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Makes the calling thread (`main`, which runs the engine) one of the global rayon pool's
/// workers, the pool keeping its default size. A parallel loop started by a thread outside
/// the pool is handed to a worker while the caller sleeps until it is done: two thread
/// hand-offs (a futex wake and a wait) per loop, 0.1-0.2 ms each time. The engine starts
/// thousands of short loops a step (a layer norm of 1,700 tokens at width 64 is 40 µs of
/// work), so a tiny-shape step spent a quarter of its time in hand-offs. From a worker, a
/// loop starts on the calling thread and the other workers steal from it. Call once, first
/// thing in `main`, before anything uses rayon.
pub fn join_thread_pool() {
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
    {
        tracing::debug!("rayon's pool was already built: {e}");
    }
}

/// `n` f32 zeros whose pages are already written. A plain `vec![0.0; n]` of fresh memory is
/// mapped to the kernel's shared zero page; the first write to each 4 KiB page then faults,
/// copies and flushes the other cores' TLBs with an interrupt, and every buffer the engine
/// reads before it writes (a gradient sum, Adam's moments) did that for its whole size: a
/// tenth of a short GPT-2-small training run went to these faults. Written here at once, a
/// block of 2 MiB and more asked for huge pages first (`MADV_HUGEPAGE`, which the kernel's
/// default `madvise` mode honours), so a 500 MB buffer takes hundreds of faults, not 120,000.
pub fn zeros(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    advise_huge(v.as_mut_ptr().cast(), n * std::mem::size_of::<f32>());
    v.resize(n, 0.0);
    v
}

/// Asks for huge pages over the 2 MiB-aligned part of `[ptr, ptr + bytes)` (a no-op below
/// 2 MiB and outside Linux; a refusal only costs the small pages).
fn advise_huge(ptr: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).div_ceil(HUGE) * HUGE;
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside an allocation this process owns; MADV_HUGEPAGE
            // changes only how its pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

/// Blocks of this many bytes and more get their own mapping under [`return_large_blocks`].
/// An activation of 256 tokens at width 1024 in f32 is 1 MiB: every tensor that matters for
/// the peak is above it, the small bookkeeping allocations stay in the heap.
pub const LARGE_BLOCK: usize = 1 << 20;

/// Serve every block of [`LARGE_BLOCK`] bytes or more from its own `mmap` and give it back to
/// the system when freed. The kept heap of [`keep_freed_memory`] is fast but fragments: a
/// freed activation leaves a hole the next, differently sized tensor may not fit into, and a
/// ~1B-parameter LoRA step held 480-540 MiB of such free heap beside 2315 MiB in use at its
/// peak. With its own mappings the peak resident memory is what is in use, at the price of
/// page faults on every large allocation. Training under recompute (`--grad-checkpoint`)
/// has already traded time for memory, so the training stages call this then, before any
/// weight is read. A no-op outside glibc Linux.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc takes the arena's lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK as libc::c_int);
        // glibc's default cap on the number of mapped blocks.
        libc::mallopt(libc::M_MMAP_MAX, 1 << 16);
    }
}

/// The heap's bytes in use and bytes held free (glibc's `mallinfo2`), for the memory logs
/// (`--log trace`): a large free part at a peak means fragmentation, not live tensors. `None`
/// outside glibc Linux.
pub fn heap() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) as u64, m.fordblks as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Logs the heap at `what` (trace level; mallinfo2 walks the free lists, so only when asked).
pub fn trace_heap(what: std::fmt::Arguments) {
    if tracing::enabled!(tracing::Level::TRACE) {
        if let Some((used, free)) = heap() {
            tracing::trace!(
                "heap at {what}: {} MiB in use, {} MiB free",
                used >> 20,
                free >> 20
            );
        }
    }
}
