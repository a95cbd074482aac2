//! Transparent huge pages for the replay's big tables.
//!
//! A replay at ten million users touches gigabytes of tables (the friend graph, the engine's
//! user and session tables, the model's agents) at random. With 4 KiB pages nearly every such
//! access also misses the TLB and walks the page tables; in 2 MiB pages the whole working set's
//! translations fit the TLB. Most machines (Debian's default included) run THP in `madvise`
//! mode, where only regions a process asks for get huge pages: so once the tables are built,
//! every large private anonymous mapping is advised `MADV_HUGEPAGE` (later faults get huge
//! pages) and `MADV_COLLAPSE`d (what is already there is moved into huge pages now, Linux ≥ 6.1).
//! Both are advice: contents and validity of memory do not change, and a kernel that refuses
//! (older, THP off) leaves the replay as it was, only slower; the outcome is reported.
//! Collapsing needs free 2 MiB blocks, which a busy machine may lack: so `replay` also
//! re-executes itself once with glibc's `glibc.malloc.hugetlb=1` tunable, which has malloc
//! advise its own mappings as it creates them, and the tables mostly fill in huge pages.
//! Measured at 10 M users: applying events 2× faster, ticks ~20% faster.

use serde::Serialize;

/// What advising did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HugePages {
    /// Mappings advised.
    pub mappings: usize,
    /// Bytes in those mappings (2 MiB-aligned part).
    pub advised_bytes: u64,
    /// Anonymous memory of the process in huge pages before and after (`AnonHugePages`).
    pub huge_before: u64,
    pub huge_after: u64,
    /// Wall time of the advice (the collapse copies memory).
    pub seconds: f64,
    /// Bytes of the mappings whose advice the kernel refused (`MADV_COLLAPSE` refuses ranges
    /// with nothing to collapse yet, such as zeroed tables not written so far: those still
    /// fault in huge pages), and the first few reasons.
    pub refused_bytes: u64,
    pub refused: Vec<String>,
}

const HUGE: u64 = 2 << 20;

/// Advises and collapses every private anonymous writable mapping of at least `min_bytes`.
pub fn advise_large_mappings(min_bytes: u64) -> HugePages {
    let t0 = std::time::Instant::now();
    let mut out = HugePages {
        huge_before: anon_huge_bytes(),
        ..HugePages::default()
    };
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(m) => m,
        Err(e) => {
            out.refused
                .push(format!("cannot read /proc/self/maps: {e}"));
            return out;
        }
    };
    for (start, end) in maps.lines().filter_map(large_anonymous(min_bytes)) {
        let lo = start.div_ceil(HUGE) * HUGE;
        let hi = end / HUGE * HUGE;
        if hi <= lo {
            continue;
        }
        out.mappings += 1;
        out.advised_bytes += hi - lo;
        for (advice, name) in [
            (sys::HUGEPAGE, "MADV_HUGEPAGE"),
            (sys::COLLAPSE, "MADV_COLLAPSE"),
        ] {
            if let Err(e) = sys::advise(lo, hi - lo, advice) {
                out.refused_bytes += hi - lo;
                if out.refused.len() < 4 {
                    out.refused
                        .push(format!("{name} on {} MiB: {e}", (hi - lo) >> 20));
                }
            }
        }
    }
    out.huge_after = anon_huge_bytes();
    out.seconds = t0.elapsed().as_secs_f64();
    out
}

/// glibc's tunable that makes malloc advise `MADV_HUGEPAGE` on the memory it maps, so the
/// tables get huge pages as they are filled (glibc ≥ 2.35; older ones ignore it).
const MALLOC_TUNABLE: &str = "glibc.malloc.hugetlb=1";
const REEXEC_MARK: &str = "SIMULATOR_HUGEPAGE_REEXEC";

/// Re-executes this process with `MALLOC_TUNABLE` added to `GLIBC_TUNABLES` unless it is
/// there already: glibc reads tunables only at start, and with it most of the graph lands in
/// huge pages while it loads, leaving little for [`advise_large_mappings`] to collapse (which
/// needs free 2 MiB blocks and fails with ENOMEM on a fragmented machine). Same pid, same
/// arguments. Returns only if the exec could not happen (then the run goes on as it is).
pub fn reexec_with_malloc_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if tunables.contains("glibc.malloc.hugetlb") || std::env::var_os(REEXEC_MARK).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let value = if tunables.is_empty() {
            MALLOC_TUNABLE.to_owned()
        } else {
            format!("{tunables}:{MALLOC_TUNABLE}")
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", value)
            .env(REEXEC_MARK, "1")
            .exec();
        eprintln!("note: could not re-execute with {MALLOC_TUNABLE} ({err}); going on without");
    }
}

/// A `/proc/self/maps` line's range if it is a private, writable, anonymous mapping of at
/// least `min` bytes.
fn large_anonymous(min: u64) -> impl Fn(&str) -> Option<(u64, u64)> {
    move |line| {
        let mut f = line.split_whitespace();
        let range = f.next()?;
        let perms = f.next()?;
        let _offset = f.next()?;
        let _dev = f.next()?;
        let inode = f.next()?;
        let path = f.next();
        if !perms.starts_with("rw") || !perms.ends_with('p') || inode != "0" {
            return None;
        }
        if path.is_some_and(|p| p != "[heap]") {
            return None;
        }
        let (a, b) = range.split_once('-')?;
        let start = u64::from_str_radix(a, 16).ok()?;
        let end = u64::from_str_radix(b, 16).ok()?;
        (end.saturating_sub(start) >= min).then_some((start, end))
    }
}

/// `AnonHugePages` of this process, in bytes (0 if unknown).
fn anon_huge_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(target_os = "linux")]
mod sys {
    pub const HUGEPAGE: libc::c_int = libc::MADV_HUGEPAGE;
    pub const COLLAPSE: libc::c_int = libc::MADV_COLLAPSE;

    /// `madvise(addr, len, advice)` for the two advices above.
    #[allow(unsafe_code)]
    pub fn advise(addr: u64, len: u64, advice: libc::c_int) -> std::io::Result<()> {
        debug_assert!(advice == HUGEPAGE || advice == COLLAPSE);
        // SAFETY: MADV_HUGEPAGE and MADV_COLLAPSE are advice about how the kernel backs a
        // range: they never change its contents, its protection or whether it is mapped. A
        // range that was unmapped meanwhile only makes the call fail with ENOMEM.
        let rc = unsafe { libc::madvise(addr as usize as *mut libc::c_void, len as usize, advice) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub const HUGEPAGE: i32 = 0;
    pub const COLLAPSE: i32 = 1;
    pub fn advise(_: u64, _: u64, _: i32) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "transparent huge pages are Linux only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_large_private_anonymous_writable_mappings() {
        let pick = large_anonymous(1 << 20);
        let line = |s: &str| pick(s);
        assert_eq!(
            line("7f0000000000-7f0000400000 rw-p 00000000 00:00 0 "),
            Some((0x7f00_0000_0000, 0x7f00_0040_0000))
        );
        assert_eq!(
            line("55d000000000-55d000400000 rw-p 00000000 00:00 0          [heap]"),
            Some((0x55d0_0000_0000, 0x55d0_0040_0000))
        );
        // too small, shared, read-only, file-backed, stack
        assert_eq!(
            line("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 "),
            None
        );
        assert_eq!(
            line("7f0000000000-7f0000400000 rw-s 00000000 00:00 0 "),
            None
        );
        assert_eq!(
            line("7f0000000000-7f0000400000 r--p 00000000 00:00 0 "),
            None
        );
        assert_eq!(
            line("7f0000000000-7f0000400000 rw-p 00000000 08:01 1234 /usr/lib/x.so"),
            None
        );
        assert_eq!(
            line("7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0          [stack]"),
            None
        );
        assert_eq!(line("garbage"), None);
    }

    #[test]
    fn advising_a_large_table_keeps_its_contents() {
        let v: Vec<u64> = (0..(8u64 << 20)).collect();
        let r = advise_large_mappings(32 << 20);
        assert!(r.mappings >= 1, "{r:?}");
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    }
}
