//! The archive: the manifest of everything stored (written by a sync), and `verify`,
//! which reads the manifests and checks the storage against them, on every provider's
//! real test server.

mod manifest;
mod verify;
