//! The durable pull consumer a party's node folds its projections from.

use async_nats::jetstream::{self, consumer};
use hru_broker::{BrokerError, request, view_stream};

use crate::LogError;

/// The durable pull consumer a party's node folds its projections from: on the party's view
/// stream (already filtered by the agreement, server-side), acknowledged cumulatively, and
/// delivering from view sequence `start`. An existing durable standing exactly there (all
/// before `start` acknowledged, nothing in flight) is kept; one left elsewhere by a crash or a
/// rebuild is replaced, since the node's committed checkpoint, not the broker's, says what is
/// folded. The server's copy of the config is read back and compared with what was asked.
pub async fn party_consumer(
    client: &async_nats::Client,
    party: &hru_domain::PartyId,
    name: &str,
    start: u64,
) -> Result<consumer::PullConsumer, LogError> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(view_stream(party))
        .await
        .map_err(request("view stream"))?;
    let durable = format!("{party}-{name}");
    let asked = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        ack_policy: consumer::AckPolicy::All,
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start.max(1),
        },
        replay_policy: consumer::ReplayPolicy::Instant,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    if let Ok(mut existing) = stream.get_consumer::<consumer::pull::Config>(&durable).await {
        let info = existing.info().await.map_err(request("consumer info"))?.clone();
        if info.ack_floor.stream_sequence + 1 == start.max(1) && info.num_ack_pending == 0 {
            check_consumer(&asked, &info.config, false)?;
            return Ok(existing);
        }
        stream
            .delete_consumer(&durable)
            .await
            .map_err(request("replace durable consumer"))?;
    }
    let mut created: consumer::PullConsumer = stream
        .create_consumer(asked.clone())
        .await
        .map_err(request("create durable consumer"))?;
    let got = created.info().await.map_err(request("consumer info"))?.config.clone();
    check_consumer(&asked, &got, true)?;
    Ok(created)
}

/// Refuse a consumer whose server-side config differs from what was asked (a server that
/// silently drops a field it does not know would otherwise widen what a party reads).
fn check_consumer(asked: &consumer::pull::Config, got: &consumer::Config, deliver: bool) -> Result<(), LogError> {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let fields = [
        (
            "durable_name",
            format!("{:?}", asked.durable_name),
            format!("{:?}", got.durable_name),
        ),
        (
            "filter_subject",
            asked.filter_subject.clone(),
            got.filter_subject.clone(),
        ),
        (
            "filter_subjects",
            format!("{:?}", sorted(&asked.filter_subjects)),
            format!("{:?}", sorted(&got.filter_subjects)),
        ),
        (
            "ack_policy",
            format!("{:?}", asked.ack_policy),
            format!("{:?}", got.ack_policy),
        ),
        (
            "deliver_policy",
            format!("{:?}", asked.deliver_policy),
            format!("{:?}", got.deliver_policy),
        ),
    ];
    match fields
        .into_iter()
        .filter(|(field, ..)| deliver || *field != "deliver_policy")
        .find(|(_, a, g)| a != g)
    {
        Some((field, a, g)) => Err(BrokerError::Request {
            operation: "check consumer",
            source: format!("{field}: asked {a}, server has {g}").into(),
        }),
        None => Ok(()),
    }
}
