//! Local storage against the shared behaviour.

mod common;

use spinoco_connector::store::local::LocalStore;

#[test]
fn local_store_behaves() {
    let root = std::env::temp_dir().join(common::behaviour::unique("spinoco-store-local"));
    let store = LocalStore::open(&root).unwrap();
    common::behaviour::run(&store, 8 * 1024 * 1024);
    let temp = root.join(".spinoco-connector/tmp");
    assert_eq!(
        std::fs::read_dir(temp).unwrap().count(),
        0,
        "temp files left behind"
    );
    std::fs::remove_dir_all(root).unwrap();
}
