//! Proving the archive: `verify` reads the manifests of what was stored and checks the
//! storage against them, on every provider's real test server.

mod verify;
