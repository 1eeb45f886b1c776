//! The one way the engine hands a record to librdkafka: waiting while the
//! producer's queue is full (backpressure), refusing what Kafka can never
//! take, and retrying transient errors when the caller wants to. Used by the
//! output sink, the state changelog, the demo and the simulator.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::util::IntoOpaque;

/// Why a record was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Kafka can never take it (too large, invalid): retrying is useless.
    #[error("refused: {0}")]
    Refused(KafkaError),
    /// Any other error, when transient errors are not retried.
    #[error(transparent)]
    Failed(KafkaError),
    /// `stop` said so while waiting.
    #[error("stopped while waiting to produce")]
    Stopped,
}

/// What to do with an error that is neither backpressure nor a refusal
/// (an unknown topic while metadata refreshes, brokers down).
pub enum Transient<'a> {
    /// Give up with [`SendError::Failed`].
    Fail,
    /// Retry every 200 ms, calling the function with each error (to log
    /// it, or to report not ready).
    Retry(&'a mut dyn FnMut(&KafkaError)),
}

/// Hands `record` to `producer`. While the queue is full, sends what it
/// holds now (not after `linger.ms`), serves delivery reports and tries
/// again: with short polls, since `poll` waits out its whole timeout and a
/// long one per full queue would cap throughput at a queue per poll.
/// `stop` is asked between attempts. Returns once librdkafka holds the
/// record (its delivery report comes later, through the context).
pub fn send<C, K, P, D>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, D>,
    mut transient: Transient<'_>,
    stop: &dyn Fn() -> bool,
) -> Result<(), SendError>
where
    C: ProducerContext<DeliveryOpaque = D>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                let _ = producer.flush(Duration::ZERO);
                producer.poll(Duration::from_millis(1));
                record = back;
            }
            Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
            | Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument), _)) => {
                return Err(SendError::Refused(e));
            }
            Err((e, back)) => match &mut transient {
                Transient::Fail => return Err(SendError::Failed(e)),
                Transient::Retry(on_error) => {
                    on_error(&e);
                    producer.poll(Duration::from_millis(200));
                    record = back;
                }
            },
        }
        if stop() {
            return Err(SendError::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::DefaultProducerContext;

    /// A queue of one record: the second send waits for the first to be
    /// delivered instead of failing; a record larger than Kafka takes is
    /// refused at once; an error is retried only when asked to.
    #[test]
    fn waits_while_the_queue_is_full_and_refuses_what_kafka_never_takes() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("queue.buffering.max.messages", "1")
            .set("message.max.bytes", "1000")
            .create()
            .unwrap();
        let never = || false;
        for i in 0..20 {
            let p = format!("{i}");
            send(&producer, BaseRecord::<(), str>::to("t").payload(&p), Transient::Fail, &never).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let big = "x".repeat(5000);
        let err = send(&producer, BaseRecord::<(), str>::to("t").payload(&big), Transient::Fail, &never).unwrap_err();
        assert!(matches!(err, SendError::Refused(_)), "{err:?}");
        // A full queue and a stop request: stopped, not stuck.
        send(&producer, BaseRecord::<(), str>::to("t").payload("a"), Transient::Fail, &never).unwrap();
        let err = send(&producer, BaseRecord::<(), str>::to("t").payload("b"), Transient::Fail, &|| true);
        assert!(matches!(err, Err(SendError::Stopped) | Ok(())), "{err:?}");
    }
}
