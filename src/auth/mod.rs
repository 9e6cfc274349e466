//! Token authentication and the CAE decision: keys, validation, cache, sender constraint (DPoP
//! proofs, certificate binding, replay), decision, challenges.

pub mod cache;
pub mod challenge;
pub mod claims;
pub mod decide;
pub mod dpop;
pub mod inbound;
pub mod keys;
pub mod replay;
pub mod sender;
pub mod token;
