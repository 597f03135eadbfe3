//! The honesty check run at the end of every measurement: every replica applied
//! the same commands in the same slots and order, and every submitted command.
//!
//! Each replica folds what it applies into an [`AppliedLog`]: a count, an
//! order-sensitive running hash of `(index, slot, client, sequence)`, and an
//! order-free sum of per-command hashes. The clients fold what they submit into a
//! [`Submitted`]. Equal order hashes mean the logs agree; an equal count and sum
//! against the submitted set means nothing was lost or added.

use paxos_core::{CommandId, Slot};

/// A 64-bit mixer (the splitmix64 finalizer): cheap, and every input bit reaches every output bit.
fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

fn command_hash(id: CommandId) -> u64 {
    // Multiplying by an odd constant is a bijection, so distinct clients land far apart
    // before the sequence is folded in.
    mix(id.client.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id.sequence)
}

/// What one replica applied, folded into a few numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedLog {
    /// Commands applied.
    pub count: u64,
    /// Running hash of `(index, slot, command id)` in apply order.
    pub order_hash: u64,
    /// Sum of the per-command hashes, independent of order.
    pub set_hash: u64,
}

impl AppliedLog {
    /// Folds in one applied command.
    #[inline]
    pub fn record(&mut self, index: u64, slot: Slot, id: CommandId) {
        let command = command_hash(id);
        self.count += 1;
        self.set_hash = self.set_hash.wrapping_add(command);
        // A multiply-rotate chain: cheap per command, and sensitive to order,
        // since each step scrambles everything folded in before it.
        let position = index.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ slot.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.order_hash = (self.order_hash ^ command ^ position).wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(29);
    }
}

/// What the clients submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Submitted {
    /// Distinct commands submitted.
    pub count: u64,
    /// Sum of the per-command hashes.
    pub set_hash: u64,
}

impl Submitted {
    /// Folds in one submitted command (count each command id once, not its retries).
    #[inline]
    pub fn record(&mut self, id: CommandId) {
        self.count += 1;
        self.set_hash = self.set_hash.wrapping_add(command_hash(id));
    }

    /// Adds another client's submissions.
    pub fn merge(&mut self, other: Submitted) {
        self.count += other.count;
        self.set_hash = self.set_hash.wrapping_add(other.set_hash);
    }
}

/// Why a run's figures are not reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgreementError {
    /// A replica applied a different number of commands than were submitted.
    #[error("replica {replica} applied {applied} commands but {submitted} were submitted")]
    Count {
        /// Position of the replica (node id - 1).
        replica: usize,
        /// Commands it applied.
        applied: u64,
        /// Commands submitted.
        submitted: u64,
    },
    /// A replica applied a different set of commands than were submitted.
    #[error("replica {replica} applied other commands than the ones submitted")]
    Commands {
        /// Position of the replica.
        replica: usize,
    },
    /// Two replicas applied the commands in different slots or orders.
    #[error("replicas {first} and {second} disagree on the order of the log")]
    Order {
        /// One replica.
        first: usize,
        /// Another, disagreeing.
        second: usize,
    },
    /// There were no replicas to check.
    #[error("no replica logs to check")]
    Empty,
}

/// Checks that every log holds exactly the submitted commands, in one order.
pub fn check_agreement(logs: &[AppliedLog], submitted: &Submitted) -> Result<(), AgreementError> {
    let first = logs.first().ok_or(AgreementError::Empty)?;
    for (replica, log) in logs.iter().enumerate() {
        if log.count != submitted.count {
            return Err(AgreementError::Count { replica, applied: log.count, submitted: submitted.count });
        }
        if log.set_hash != submitted.set_hash {
            return Err(AgreementError::Commands { replica });
        }
        if log.order_hash != first.order_hash {
            return Err(AgreementError::Order { first: 0, second: replica });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client: u64, sequence: u64) -> CommandId {
        CommandId { client, sequence }
    }

    #[test]
    fn equal_logs_pass_and_each_kind_of_difference_fails() {
        let mut submitted = Submitted::default();
        let mut a = AppliedLog::default();
        let mut b = AppliedLog::default();
        for (index, (client, sequence)) in [(1, 0), (2, 0), (1, 1)].into_iter().enumerate() {
            submitted.record(id(client, sequence));
            a.record(index as u64, 1 + index as u64 / 2, id(client, sequence));
            b.record(index as u64, 1 + index as u64 / 2, id(client, sequence));
        }
        assert_eq!(check_agreement(&[a, b], &submitted), Ok(()));

        // Same commands, two swapped.
        let mut swapped = AppliedLog::default();
        swapped.record(0, 1, id(2, 0));
        swapped.record(1, 1, id(1, 0));
        swapped.record(2, 2, id(1, 1));
        assert_eq!(check_agreement(&[a, swapped], &submitted), Err(AgreementError::Order { first: 0, second: 1 }));

        // Same order, another slot.
        let mut moved = AppliedLog::default();
        moved.record(0, 1, id(1, 0));
        moved.record(1, 2, id(2, 0));
        moved.record(2, 2, id(1, 1));
        assert_eq!(check_agreement(&[a, moved], &submitted), Err(AgreementError::Order { first: 0, second: 1 }));

        // One missing.
        let mut short = AppliedLog::default();
        short.record(0, 1, id(1, 0));
        assert_eq!(
            check_agreement(&[a, short], &submitted),
            Err(AgreementError::Count { replica: 1, applied: 1, submitted: 3 })
        );

        // One replaced by a command nobody submitted.
        let mut foreign = AppliedLog::default();
        foreign.record(0, 1, id(1, 0));
        foreign.record(1, 1, id(2, 0));
        foreign.record(2, 2, id(9, 9));
        assert_eq!(check_agreement(&[a, foreign], &submitted), Err(AgreementError::Commands { replica: 1 }));
        assert_eq!(check_agreement(&[], &submitted), Err(AgreementError::Empty));
    }
}
