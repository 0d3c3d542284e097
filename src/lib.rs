//! The gRPC contract of carrier-ingest (`carrier.ingest.v1`), generated from `proto/`.
//!
//! Every message also implements serde following protobuf's canonical JSON mapping, which is
//! the format of the queue body (`Envelope`).
#![forbid(unsafe_code)]

/// Generated types and service stubs of `carrier.ingest.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("carrier.ingest.v1");
    include!(concat!(env!("OUT_DIR"), "/carrier.ingest.v1.serde.rs"));
}

/// The encoded file descriptor set of `proto/`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/carrier_ingest_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1::{Carrier, Envelope, InboundMessage, envelope::Event};

    #[test]
    fn envelope_uses_canonical_json_names() {
        let envelope = Envelope {
            event_id: "abc".into(),
            schema_version: 1,
            received_at: "2024-01-15T10:30:00Z".into(),
            event: Some(Event::Inbound(InboundMessage {
                carrier: Carrier::Twilio as i32,
                carrier_message_id: "SM1".into(),
                from: "+15559876543".into(),
                to: vec!["+15551234567".into()],
                segment_count: Some(2),
                ..Default::default()
            })),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["eventId"], "abc");
        assert_eq!(json["schemaVersion"], 1);
        assert_eq!(json["inbound"]["carrier"], "CARRIER_TWILIO");
        assert_eq!(json["inbound"]["carrierMessageId"], "SM1");
        assert_eq!(json["inbound"]["segmentCount"], 2);
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }
}
