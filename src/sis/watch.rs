//! Drop folder.
