//! Everything that talks to Kafka: the consumer loop behind `run`
//! ([`source`]), the output and dead-letter producer ([`sink`]), the state
//! changelog ([`changelog`]), the outcomes topic's reader ([`outcomes`]),
//! and the one send loop they and the demo and simulator share
//! ([`produce`]).

pub mod ahead;
pub mod changelog;
pub mod outcomes;
pub mod produce;
pub mod sink;
pub mod source;

use rdkafka::message::{BorrowedMessage, Message};

use crate::engine::InputRecord;

/// A consumed message as the engine takes it.
pub fn input_record<'a>(m: &'a BorrowedMessage<'_>) -> InputRecord<'a> {
    InputRecord {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        payload: m.payload(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}
