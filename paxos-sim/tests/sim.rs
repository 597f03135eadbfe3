//! The simulator in CI: many short seeds with every fault on, and proof that the
//! checker is not vacuous (a planted bug is caught).

use paxos_core::harness::StorageFaults;
use paxos_core::Protocol;
use paxos_sim::{run, SimConfig, Summary};

#[test]
fn basic_and_multi_paxos_keep_every_invariant_under_faults() {
    let mut total = Summary::default();
    for seed in 0..150 {
        for protocol in [Protocol::Basic, Protocol::Multi] {
            let config = SimConfig { steps: 600, ..SimConfig::all_faults(protocol, seed) };
            match run(&config) {
                Ok(summary) => total.add(&summary),
                Err(violation) => panic!("{violation}"),
            }
        }
    }
    assert!(total.faults_injected() > 20_000, "too few faults to mean anything: {total:?}");
    assert!(total.faults.crashes > 50 && total.faults.writes_lost > 0 && total.partitions > 50, "{total:?}");
    assert!(total.acknowledged > 1_000, "the runs made progress: {total:?}");
}

#[test]
fn a_reply_sent_before_its_write_completed_is_caught() {
    // The planted bug: replies leave before their write, and crashes lose the write.
    let caught = (0..200).find_map(|seed| {
        let mut config = SimConfig { steps: 1_500, ..SimConfig::all_faults(Protocol::Multi, seed) };
        config.storage = StorageFaults { write_delay_max: 200, reply_before_persist: true };
        run(&config).err()
    });
    let violation = caught.expect("the checker caught the planted bug within 200 seeds");
    assert!(!violation.what.starts_with("panic"), "the checker, not an assertion in the core: {violation}");
    eprintln!("caught: {violation}");
}

#[test]
fn a_seed_replays_exactly() {
    let config = SimConfig { steps: 500, ..SimConfig::all_faults(Protocol::Multi, 7) };
    assert_eq!(run(&config), run(&config));
}
