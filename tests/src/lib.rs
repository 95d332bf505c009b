//! Helpers for the cross-process tests: locating the built binaries and the generated fixtures.
