//! Shared Signals receiver: SET verification, event mapping, push endpoint, poll client and SSF
//! stream management. Meets the rest of the proxy only through [`crate::store::SignalStore`].
//!
//! Wiring (per configured transmitter, kept across reloads):
//! 1. `keys = Arc::new(KeySet::new(&t.name, t.keys.clone(), &t.issuer, t.key_policy.clone(),
//!    t.min_rsa_bits, fetcher.clone()))`, spawn `keys.clone().run_refresher(shutdown.clone())`;
//! 2. `rt = Arc::new(push::TransmitterRt::new(t.clone(), keys, token_issuer_url))`, where
//!    `token_issuer_url` is the `issuer` of the `[[issuer]]` named by `t.token_issuer`; on reload
//!    call `rt.reconfigure(new_t, url)` instead of building a new one;
//! 3. push: on the `signals` listener route `POST t.push.path` to
//!    `push::handle_push(&rt, &store, req, store::now_secs())`;
//! 4. poll: when `t.poll` is set or `t.stream.delivery` is poll, spawn
//!    `poll::run_poller(rt.clone(), store.clone(), fetcher.clone(), shutdown.clone())`;
//! 5. stream: when `t.stream` is set, spawn
//!    `stream::run_stream_manager(rt.clone(), fetcher.clone(), shutdown.clone())`;
//! 6. readiness: `rt.keys.is_loaded() && rt.stream_active()`; metrics: `rt.counters`,
//!    `rt.freshness` (or `rt.freshness.set_observer(..)`).

pub mod events;
pub mod poll;
pub mod push;
pub mod set;
pub mod stream;
pub mod subject;
