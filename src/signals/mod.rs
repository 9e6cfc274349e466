//! Shared Signals receiver. Meets the rest of the proxy only through [`crate::store::SignalStore`].
//!
//! - [`vocabulary`]: event-type URIs (CAEP, RISC, OAuth, SSF) and their classification;
//! - [`set`] (pure): SET parse and verification; [`subject`]: subject identifiers → table keys;
//! - [`events`] (pure): a verified SET → a plan of table changes;
//! - [`transmitter`]: the per-transmitter runtime push, poll and stream management share;
//! - [`process`]: one SET from arrival to commit (shared by push and poll);
//! - [`push`]: the RFC 8935 endpoint; [`poll`]: the RFC 8936 client; [`stream`]: the SSF stream
//!   management client; [`lifecycle`]: the stream over time (manager task, reconcile,
//!   verification with a deadline, the operator's actions, deletion on removal);
//! - [`runtime`]: the signals side of a configuration (transmitters kept across reloads, their
//!   tasks, readiness, metrics observers).

pub mod events;
pub mod lifecycle;
pub mod poll;
pub mod process;
pub mod push;
pub mod runtime;
pub mod set;
pub mod stream;
pub mod subject;
pub mod transmitter;
pub mod vocabulary;
