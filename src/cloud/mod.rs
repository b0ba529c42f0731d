//! Cloud-native identities and the cloud SDKs' configuration conventions (moving into
//! the storage providers).

pub mod azure;

pub(crate) use crate::store::client::identity::*;
