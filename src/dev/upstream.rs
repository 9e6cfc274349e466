//! `EchoUpstream`: placeholder.
