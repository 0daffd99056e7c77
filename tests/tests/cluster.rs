//! buffer-core against a real Redis Cluster (3 masters, started by `buffer_tests::cluster`):
//! every operation, one URL of any node or a comma list, AUTH, and slots moving under load.

use std::collections::BTreeSet;
use std::time::Duration;

use buffer_core::{Buffer, BufferConfig, StoreName};
use buffer_tests::cluster::TestCluster;
use serde_json::{Value, json};

/// Store names whose groups land on every master.
fn stores(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("store-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_stores_on_every_master_are_acknowledged_and_stored_on_their_slot_owner() {
    let cluster = TestCluster::start();
    let buffer = cluster.buffer().await;
    let mut masters_used = BTreeSet::new();
    for (i, store) in stores(24).iter().enumerate() {
        let receipt = buffer.push(store.as_str(), &json!({"i": i})).await.unwrap();
        assert_eq!(receipt.records, 1);
        let receipt = buffer
            .push_many(store.as_str(), &[json!({"i": i}), json!({"j": i})])
            .await
            .unwrap();
        assert_eq!(receipt.records, 3);
        assert_eq!(receipt.keys, 2);
    }
    // Each store's records live on the master of its keys' slot: find them there.
    for key in cluster.all_keys() {
        masters_used.insert(cluster.master_for_key(&key));
    }
    assert_eq!(
        masters_used.len(),
        3,
        "stores spread over the three masters"
    );
}
