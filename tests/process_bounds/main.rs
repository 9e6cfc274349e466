//! Tests that measure this test process itself: its open descriptors (`/proc/self/fd`) and its
//! resident memory (`VmRSS` of `/proc/self/status`), where the proxy, the echo upstream and the
//! clients all live. Such numbers mean something only when nothing else runs in the process, so
//! these tests have their own binary (the other end-to-end tests share `tests/e2e/`, whose
//! harness they use) and run one at a time (`SERIAL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_imports)]
#[path = "../e2e/common/mod.rs"]
mod common;

mod h2_floods;
mod streaming;

use std::time::Duration;

/// One test at a time: the descriptor and memory numbers are then the test's own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Open descriptors of this process.
fn open_fds() -> usize {
    common::procfs::open_fds("self")
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    common::procfs::rss_kib("self")
}

/// Waits (bounded) until the open descriptors fall to `limit` or below; returns the last count.
async fn fds_settle(limit: usize, within: Duration) -> usize {
    common::poll_until(within, || async {
        let n = open_fds();
        (n <= limit).then_some(n)
    })
    .await
    .unwrap_or_else(open_fds)
}
