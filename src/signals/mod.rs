//! Shared Signals receiver: SET verification, event mapping, push endpoint, poll client and SSF
//! stream management. Meets the rest of the proxy only through [`crate::store::SignalStore`].

pub mod events;
pub mod poll;
pub mod push;
pub mod set;
pub mod stream;
pub mod subject;

#[cfg(test)]
pub(crate) mod testkit;
