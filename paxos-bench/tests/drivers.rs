//! Each driver on a tiny configuration: it measures something, and its agreement
//! check passes on the real logs and fails once one log is tampered with.

use std::time::Duration;

use paxos_bench::node_run::NodeCluster;
use paxos_bench::protocol_loop::LoopCluster;
use paxos_bench::{check_agreement, AgreementError, ProtocolKind, Spec, StorageKind, TransportKind};
use paxos_core::CommandId;

fn spec(protocol: ProtocolKind, transport: TransportKind, storage: StorageKind, in_flight: usize) -> Spec {
    Spec { protocol, transport, storage, replicas: 3, command_bytes: 8, in_flight, batch: true }
}

/// Tampering with any one replica's log makes the check fail.
fn assert_tampering_is_caught(logs: &[paxos_bench::AppliedLog], submitted: &paxos_bench::Submitted) {
    assert_eq!(check_agreement(logs, submitted), Ok(()));
    // One extra command nobody submitted, on the last replica.
    let mut extra = logs.to_vec();
    let last = extra.len() - 1;
    extra[last].record(submitted.count, 1_000_000, CommandId { client: 999, sequence: 0 });
    assert!(matches!(check_agreement(&extra, submitted), Err(AgreementError::Count { .. })));
    // Same count and commands, another order: rebuild replica 0's log with the last two entries swapped.
    let mut reordered = logs.to_vec();
    let mut swapped = paxos_bench::AppliedLog::default();
    swapped.record(1, 1, CommandId { client: 2, sequence: 0 });
    swapped.record(0, 1, CommandId { client: 1, sequence: 0 });
    let mut straight = paxos_bench::AppliedLog::default();
    straight.record(0, 1, CommandId { client: 1, sequence: 0 });
    straight.record(1, 1, CommandId { client: 2, sequence: 0 });
    reordered[0] = straight;
    reordered[1] = swapped;
    let mut two = paxos_bench::Submitted::default();
    two.record(CommandId { client: 1, sequence: 0 });
    two.record(CommandId { client: 2, sequence: 0 });
    assert!(matches!(check_agreement(&reordered[..2], &two), Err(AgreementError::Order { .. })));
}

#[test]
fn protocol_loop_applies_everything_everywhere() {
    for protocol in [ProtocolKind::Basic, ProtocolKind::Multi] {
        for in_flight in [1, 16] {
            let spec = spec(protocol, TransportKind::Loop, StorageKind::Memory, in_flight);
            let mut cluster = LoopCluster::new(&spec).unwrap();
            let elapsed = cluster.run_commands(300).unwrap();
            assert!(elapsed > Duration::ZERO);
            assert!(cluster.completed() >= 300);
            cluster.finish().unwrap();
            let submitted = *cluster.submitted();
            assert!(submitted.count >= 300, "{protocol:?}: {submitted:?}");
            for log in cluster.logs() {
                assert_eq!(log.count, submitted.count);
            }
            assert_tampering_is_caught(cluster.logs(), &submitted);
        }
    }
}

#[test]
fn protocol_loop_measurement_reports_rate_and_latency() {
    let spec = spec(ProtocolKind::Multi, TransportKind::Loop, StorageKind::Memory, 8);
    let measurement = paxos_bench::run(&spec, Duration::from_millis(5), Duration::from_millis(30)).unwrap();
    assert!(measurement.commands > 0);
    assert!(measurement.ops_per_sec() > 0.0);
    assert!(measurement.latency_samples() > 0);
    assert!(measurement.latency_percentile_us(99.0) >= measurement.latency_percentile_us(50.0));
    // One command in LATENCY_SAMPLE_EVERY is timed; the window may cut into the
    // outstanding commands at either end.
    let expected = measurement.commands / paxos_bench::protocol_loop::LATENCY_SAMPLE_EVERY;
    let samples = measurement.latency_samples() as u64;
    let slack = spec.in_flight as u64 + 1;
    assert!(
        samples + slack >= expected && samples <= expected + slack,
        "{samples} latency samples for {} commands",
        measurement.commands
    );
}

fn node_cluster_round(spec: &Spec) {
    let mut cluster = NodeCluster::start(spec).unwrap();
    cluster.run_commands(100).unwrap();
    let measurement = cluster.finish().unwrap();
    assert!(measurement.latency_samples() == 0, "latencies are recorded only in a measured window");
}

#[test]
fn node_over_memory_transport_applies_everything_everywhere() {
    for protocol in [ProtocolKind::Basic, ProtocolKind::Multi] {
        node_cluster_round(&spec(protocol, TransportKind::Memory, StorageKind::Memory, 4));
    }
    let spec = spec(ProtocolKind::Multi, TransportKind::Memory, StorageKind::Memory, 4);
    let measurement = paxos_bench::run(&spec, Duration::from_millis(20), Duration::from_millis(100)).unwrap();
    assert!(measurement.commands > 0);
    assert!(measurement.latency_percentile_us(50.0) > 0.0);
}

#[test]
fn node_cluster_logs_fail_the_check_when_tampered_with() {
    let spec = spec(ProtocolKind::Multi, TransportKind::Memory, StorageKind::Memory, 2);
    let mut cluster = NodeCluster::start(&spec).unwrap();
    cluster.run_commands(20).unwrap();
    let logs = cluster.logs();
    // Logs taken mid-run may trail; they still hold no command twice, and one forged entry breaks agreement.
    let mut forged = logs.clone();
    forged[0].record(logs[0].count, 1, CommandId { client: 77, sequence: 0 });
    let submitted = paxos_bench::Submitted { count: forged[0].count, ..Default::default() };
    assert!(check_agreement(&forged, &submitted).is_err());
    cluster.finish().unwrap();
}

#[cfg(feature = "tcp")]
#[test]
fn node_over_tcp_loopback_applies_everything_everywhere() {
    node_cluster_round(&spec(ProtocolKind::Multi, TransportKind::Tcp, StorageKind::Memory, 4));
}

#[cfg(feature = "file")]
#[test]
fn node_on_file_storage_applies_everything_everywhere() {
    node_cluster_round(&spec(ProtocolKind::Basic, TransportKind::Memory, StorageKind::File, 4));
    node_cluster_round(&spec(ProtocolKind::Multi, TransportKind::Memory, StorageKind::File, 4));
}

#[cfg(feature = "zmq")]
#[test]
fn node_over_zmq_loopback_applies_everything_everywhere() {
    node_cluster_round(&spec(ProtocolKind::Multi, TransportKind::Zmq, StorageKind::Memory, 4));
    node_cluster_round(&spec(ProtocolKind::Basic, TransportKind::Zmq, StorageKind::Memory, 4));
}

#[test]
fn unavailable_backends_are_refused_with_a_reason() {
    let zmq = spec(ProtocolKind::Multi, TransportKind::Zmq, StorageKind::Memory, 1);
    if cfg!(feature = "zmq") {
        assert_eq!(zmq.validate(), Ok(()));
    } else {
        assert!(zmq.validate().unwrap_err().to_string().contains("--features zmq"));
    }
    let loop_file = spec(ProtocolKind::Multi, TransportKind::Loop, StorageKind::File, 1);
    assert!(loop_file.validate().unwrap_err().to_string().contains("--storages memory"));
    let none = Spec { in_flight: 0, ..spec(ProtocolKind::Multi, TransportKind::Loop, StorageKind::Memory, 1) };
    assert!(none.validate().unwrap_err().to_string().contains("in_flight"));
    assert!(NodeCluster::start(&spec(ProtocolKind::Multi, TransportKind::Loop, StorageKind::Memory, 1)).is_err());
}
