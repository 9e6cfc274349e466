//! `DevTransmitter`: placeholder.
