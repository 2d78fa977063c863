//! The socat serial backend (being written).
