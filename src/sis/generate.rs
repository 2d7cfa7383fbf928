//! Synthetic OneRoster exports.
