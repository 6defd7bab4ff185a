//! Exact median.
