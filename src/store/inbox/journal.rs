//! The inbox journal file (being built).
