//! How many arenas glibc's allocator may make.
//!
//! glibc gives a thread that finds the arenas in use one of its own, up to eight per core, and
//! what a thread frees stays in its arena for that arena's next allocations. tiendo's threads
//! (tokio's workers, librdkafka's) each allocate and free in bursts, batch by batch, so memory
//! freed in one arena sat unused while another grew: over a 60-day backfill of 10M messages,
//! RSS at most was 139-152 MiB with glibc's limit and 107-125 MiB with two arenas, at the same
//! speed (BENCHMARKS.md, thirteenth session).

/// Arenas at most, unless the operator chose through glibc's own settings.
const ARENAS: i32 = 2;

/// Limits glibc's arenas to [`ARENAS`]. Call it before any thread starts: glibc fixes its
/// limit when a second arena is first needed. A no-op off glibc, and where `MALLOC_ARENA_MAX`
/// or a `GLIBC_TUNABLES` arena setting is given (glibc has read those already).
pub fn limit_arenas() {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.arena_max"));
    if !chosen {
        set_arena_max(ARENAS);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt only sets a parameter of the allocator; M_ARENA_MAX takes any positive
    // count. It returns 0 on failure, which leaves glibc's own limit: nothing to undo.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}
