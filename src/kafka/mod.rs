//! Everything that talks to Kafka: the consumer loop behind `run`
//! ([`source`]), the output and dead-letter producer ([`sink`]), the state
//! changelog ([`changelog`]), the outcomes topic's reader ([`outcomes`]),
//! and the one send loop they and the demo and simulator share
//! ([`produce`]).

pub mod changelog;
pub mod outcomes;
pub mod produce;
pub mod sink;
pub mod source;
