//! The archive: the manifest of everything stored, and what proves it.

mod manifest;
