//! Scenario 7 (in progress).
