//! Scenario 4 (in progress).
