//! Token authentication and the CAE decision: keys, validation, cache, sender constraint (DPoP
//! proofs, certificate binding, replay), decision, challenges.

pub mod cache;
pub mod challenge;
pub mod decide;
pub mod dpop;
/// Fuzz target body for the proof parser (`fuzz/fuzz_targets/dpop_proof.rs`); not part of the API.
#[doc(hidden)]
pub mod dpop_fuzz;
pub mod keys;
pub mod replay;
pub mod sender;
pub mod token;
