//! The trust boundary: the connector tried as a hostile platform, a flaky network and
//! a neighbour on the same volume or port would try it. Each attack is served by the
//! hostile platform of `common::hostile` (or a real storage server), and each test
//! checks that nothing is lost, deleted, overwritten or leaked.

mod deletes;
mod downloads;
mod feed;
mod log_safety;
mod metrics_port;
mod neighbour;
mod store_names;
mod upload_stage;
