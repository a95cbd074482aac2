//! The relay over both real stores, in temp dirs on disk (the cases: `common/cases.rs`).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

mod common;

use common::cases::*;

both_stores!(
    busy_past_the_unsettled_bound,
    one_to_one_in_both_inboxes,
    group_fan_out,
    refusals,
    dedupe_before_after_commit_and_restart,
    edit_delete_read_rules,
    sync_order_and_batching,
    history_pages_backwards,
    retention_trim,
    durable_across_reopen,
    acks,
    typing_is_ephemeral_and_rate_limited,
    failed_commit_resets,
    edit_of_in_flight_message,
    head_cache_eviction,
);
