//! The native serial backend (being written).
