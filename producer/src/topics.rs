//! Creating the topics evstream writes to. Creation is idempotent: an existing topic is left as it is.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// The shape of a topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub compacted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create topic {topic}: {code:?}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("kafka admin request failed")]
    Kafka(#[from] KafkaError),
}

pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
}

impl Topics {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()?;
        Ok(Self { admin })
    }

    /// Creates every topic that does not exist yet.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<(), TopicError> {
        let compact = [("cleanup.policy", "compact")];
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|s| {
                let t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication));
                if s.compacted {
                    compact.iter().fold(t, |t, (k, v)| t.set(k, v))
                } else {
                    t
                }
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(10)));
        for r in self.admin.create_topics(&new, &opts).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
        Ok(())
    }
}
