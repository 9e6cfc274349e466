//! Bearer-token authentication and the CAE decision: keys, validation, cache, decision, challenges.

pub mod cache;
pub mod challenge;
pub mod decide;
pub mod keys;
pub mod token;
