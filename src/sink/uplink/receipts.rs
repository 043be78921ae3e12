//! What the server has proven it received on one connection.
//!
//! A broker handles a connection's packets in the order they arrive, and
//! TCP delivers them in the order they were sent; so a packet that answers
//! one of ours (PINGRESP, PUBACK, PUBREC, SUBACK, UNSUBACK) proves that
//! every PUBLISH written before that request arrived. Publishes are counted
//! as rumqttc writes them; an answer confirms the count its request was
//! written at. The uplink numbers its publishes the same way (1, 2, … per
//! connection), so a confirmation tells it which of its batches are safe.

use std::collections::HashMap;

use rumqttc::{Incoming, Outgoing};

/// The publishes of one connection and the proof of their arrival.
#[derive(Debug, Default)]
pub struct Receipts {
    /// PUBLISH packets written on this connection (ours only, see `resent`).
    written: u64,
    /// Publishes of a resumed session rumqttc sends again before ours:
    /// they are not the uplink's to count.
    resent: u64,
    /// `written` when the unanswered PINGREQ went out.
    ping: Option<u64>,
    /// `written` at each request awaiting its acknowledgement, by packet id.
    acks: HashMap<u16, u64>,
    /// The highest count proven.
    confirmed: u64,
}

impl Receipts {
    /// A new connection whose session resent `resent` publishes of the last one first.
    pub fn new(resent: u64) -> Receipts {
        Receipts {
            resent,
            ..Receipts::default()
        }
    }

    /// rumqttc wrote `packet`.
    pub fn outgoing(&mut self, packet: &Outgoing) {
        match packet {
            Outgoing::Publish(pkid) => {
                if self.resent > 0 {
                    self.resent -= 1;
                    return;
                }
                self.written += 1;
                if *pkid != 0 {
                    self.acks.insert(*pkid, self.written);
                }
            }
            Outgoing::PingReq => self.ping = Some(self.written),
            Outgoing::Subscribe(pkid) | Outgoing::Unsubscribe(pkid) => {
                self.acks.insert(*pkid, self.written);
            }
            _ => {}
        }
    }

    /// The server sent `packet`: the new count proven, if it proves more.
    pub fn incoming(&mut self, packet: &Incoming) -> Option<u64> {
        let proven = match packet {
            Incoming::PingResp => self.ping.take(),
            Incoming::PubAck(ack) => self.acks.remove(&ack.pkid),
            Incoming::PubRec(rec) => self.acks.remove(&rec.pkid),
            Incoming::SubAck(ack) => self.acks.remove(&ack.pkid),
            Incoming::UnsubAck(ack) => self.acks.remove(&ack.pkid),
            _ => None,
        }?;
        (proven > self.confirmed).then(|| {
            self.confirmed = proven;
            proven
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, PubRec, SubAck, SubscribeReasonCode};

    #[test]
    fn a_pingresp_proves_what_was_written_before_its_pingreq() {
        let mut r = Receipts::new(0);
        r.outgoing(&Outgoing::Publish(0));
        r.outgoing(&Outgoing::Publish(0));
        r.outgoing(&Outgoing::PingReq);
        r.outgoing(&Outgoing::Publish(0));
        assert_eq!(r.incoming(&Incoming::PingResp), Some(2));
        assert_eq!(r.incoming(&Incoming::PingResp), None, "one answer per ping");
        r.outgoing(&Outgoing::PingReq);
        assert_eq!(r.incoming(&Incoming::PingResp), Some(3));
    }

    #[test]
    fn acknowledgements_prove_up_to_their_request_and_never_go_back() {
        let mut r = Receipts::new(0);
        r.outgoing(&Outgoing::Publish(1));
        r.outgoing(&Outgoing::Publish(0));
        r.outgoing(&Outgoing::Publish(2));
        r.outgoing(&Outgoing::Subscribe(3));
        r.outgoing(&Outgoing::Publish(4));
        assert_eq!(r.incoming(&Incoming::PubRec(PubRec::new(2))), Some(3));
        assert_eq!(
            r.incoming(&Incoming::PubAck(PubAck::new(1))),
            None,
            "an older answer proves nothing new"
        );
        let suback = SubAck::new(
            3,
            vec![SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce)],
        );
        assert_eq!(r.incoming(&Incoming::SubAck(suback)), None);
        assert_eq!(r.incoming(&Incoming::PubAck(PubAck::new(4))), Some(4));
        assert_eq!(
            r.incoming(&Incoming::PubAck(PubAck::new(9))),
            None,
            "an unknown packet id proves nothing"
        );
    }

    #[test]
    fn publishes_a_resumed_session_resends_are_not_counted() {
        let mut r = Receipts::new(2);
        r.outgoing(&Outgoing::Publish(7));
        r.outgoing(&Outgoing::Publish(8));
        r.outgoing(&Outgoing::Publish(0));
        r.outgoing(&Outgoing::PingReq);
        assert_eq!(r.incoming(&Incoming::PubAck(PubAck::new(8))), None);
        assert_eq!(r.incoming(&Incoming::PingResp), Some(1));
    }
}
