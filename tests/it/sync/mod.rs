//! A sync as users run it: the real binary against the platform emulator, into a local
//! folder and into each cloud provider's test server.

mod local;
mod providers;
