//! The checker is not vacuous: bugs planted inside paxos-core (feature
//! `mutations`) are caught within a bounded number of seeds.

use paxos_core::mutations::{self, Mutation};
use paxos_core::Protocol;
use paxos_sim::{run, SimConfig, Violation};

/// The first violation over seeds `0..seeds` of `protocol` with `mutation` planted.
fn first_violation(mutation: Mutation, protocol: Protocol, seeds: u64) -> Option<Violation> {
    mutations::with(mutation, || {
        (0..seeds).find_map(|seed| run(&SimConfig { steps: 1_500, ..SimConfig::all_faults(protocol, seed) }).err())
    })
}

#[test]
fn an_acceptor_that_ignores_its_promise_is_caught() {
    // Caught either by the checker or, first, by the learner's own assertion that a
    // slot is never learned with two values (a panic is a violation too).
    for protocol in [Protocol::Basic, Protocol::Multi] {
        let violation = first_violation(Mutation::AcceptorIgnoresPromise, protocol, 100)
            .unwrap_or_else(|| panic!("{protocol:?}: the planted bug went unnoticed for 100 seeds"));
        eprintln!("caught: {violation}");
    }
}

#[test]
fn a_proposer_that_skips_value_adoption_is_caught() {
    for protocol in [Protocol::Basic, Protocol::Multi] {
        // The simulator's own checker must see it on some seed, not only an
        // assertion inside the core (which catches it first on some seeds).
        let violation = mutations::with(Mutation::ProposerSkipsAdoption, || {
            (0..100).find_map(|seed| {
                run(&SimConfig { steps: 1_500, ..SimConfig::all_faults(protocol, seed) })
                    .err()
                    .filter(|violation| !violation.what.starts_with("panic"))
            })
        })
        .unwrap_or_else(|| panic!("{protocol:?}: the checker missed the planted bug for 100 seeds"));
        eprintln!("caught: {violation}");
    }
}

#[test]
fn a_leader_that_keeps_leading_after_being_overtaken_is_caught() {
    // Only Multi-Paxos has leaders. The history takes seven replicas and a
    // message older than a whole election on the other side; the simulator's
    // stale-leader prelude sets it up on its own share of seeds (7, 15, ...). The
    // checker must see the two values, not only an assertion inside the core.
    let violation = mutations::with(Mutation::LeaderIgnoresOvertaking, || {
        (0..24).find_map(|seed| {
            run(&SimConfig { steps: 300, ..SimConfig::all_faults(Protocol::Multi, seed) })
                .err()
                .filter(|violation| !violation.what.starts_with("panic"))
        })
    })
    .unwrap_or_else(|| panic!("the checker missed the planted bug for 24 seeds"));
    assert!(violation.what.contains("decided with two values"), "{violation}");
    eprintln!("caught: {violation}");
}

#[test]
fn without_a_planted_bug_the_same_seeds_pass() {
    for seed in 0..5 {
        for protocol in [Protocol::Basic, Protocol::Multi] {
            if let Err(violation) = run(&SimConfig { steps: 1_500, ..SimConfig::all_faults(protocol, seed) }) {
                panic!("{violation}");
            }
        }
    }
}
