//! The states an alert and a delivery move through, and the only transitions
//! allowed between them. Stored as text; parsed only in `store`'s row mapping.
//!
//! ```text
//!  alert:     held ──approve──► sending ──everyone handed over──► settled
//!               │                  │                                 │
//!               └──cancel──────────┴──cancel / all-clear / window over┴──► closed
//!
//!  delivery:  held ─► queued ⇄ sending ─► sent ─► delivered
//!                       │          │        └───► failed | undeliverable
//!                       └──────────┴─► cancelled | failed | undeliverable
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Waiting for approval; nothing is sent.
    Held,
    /// Its first deliveries are being handed to providers.
    Sending,
    /// Every first delivery has left the queue; confirmations and escalation
    /// continue until it closes.
    Settled,
    /// Over: no reply is matched to it, nothing is escalated, the page says so.
    Closed,
}

/// Why an alert closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseReason {
    /// Its acknowledgement window (and escalation stage) ended.
    Expired,
    /// An all-clear was sent for it.
    AllClear,
    /// An operator cancelled it: nothing more of it is sent.
    Cancelled,
    /// A follow-up (update or all-clear) closes once it has been handed over.
    Delivered,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Held => "held",
            AlertState::Sending => "sending",
            AlertState::Settled => "settled",
            AlertState::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        Some(match s {
            "held" => AlertState::Held,
            "sending" => AlertState::Sending,
            "settled" => AlertState::Settled,
            "closed" => AlertState::Closed,
            _ => return None,
        })
    }

    /// Whether `self → to` is a transition of the lifecycle.
    pub fn can_move_to(self, to: AlertState) -> bool {
        use AlertState::*;
        matches!(
            (self, to),
            (Held, Sending)
                | (Held, Closed)
                | (Sending, Settled)
                | (Sending, Closed)
                | (Settled, Closed)
        )
    }

    /// Open alerts take replies and may still send.
    pub fn is_open(self) -> bool {
        self != AlertState::Closed
    }
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Expired => "expired",
            CloseReason::AllClear => "all-clear",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Delivered => "delivered",
        }
    }

    pub fn parse(s: &str) -> Option<CloseReason> {
        Some(match s {
            "expired" => CloseReason::Expired,
            "all-clear" => CloseReason::AllClear,
            "cancelled" => CloseReason::Cancelled,
            "delivered" => CloseReason::Delivered,
            _ => return None,
        })
    }
}

/// Where one message to one address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Its alert waits for approval.
    Held,
    /// Due at `next_attempt_at`.
    Queued,
    /// Claimed by a worker; its request may be in flight.
    Sending,
    /// A provider accepted it.
    Sent,
    /// The provider reported it delivered.
    Delivered,
    /// Gave up (retries spent, window closed) or the provider reported failure.
    Failed,
    /// The address itself is bad; never retried, never escalated to.
    Undeliverable,
    /// Its alert was cancelled (or the person confirmed before an escalation left).
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 8] = [
        DeliveryState::Held,
        DeliveryState::Queued,
        DeliveryState::Sending,
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Undeliverable,
        DeliveryState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Held => "held",
            DeliveryState::Queued => "queued",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Undeliverable => "undeliverable",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Progress rank: a provider's report only ever moves a delivery up.
    fn rank(self) -> u8 {
        match self {
            DeliveryState::Held | DeliveryState::Queued => 0,
            DeliveryState::Sending => 1,
            DeliveryState::Sent => 2,
            _ => 3,
        }
    }

    /// Whether `self → to` is allowed. Only `sending → queued` goes back (a
    /// retry or crash recovery); final states never change.
    pub fn can_move_to(self, to: DeliveryState) -> bool {
        use DeliveryState::*;
        match (self, to) {
            (Held, Queued) | (Held, Cancelled) => true,
            (Queued, Sending) | (Queued, Cancelled) => true,
            (Sending, Queued) | (Sending, Cancelled) => true,
            (Delivered | Failed | Undeliverable | Cancelled, _) => false,
            (Held, _) => false,
            (from, to) => to.rank() > from.rank(),
        }
    }

    /// Still owed: in the queue or in flight.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            DeliveryState::Held | DeliveryState::Queued | DeliveryState::Sending
        )
    }

    /// Handed to a provider.
    pub fn is_handed_over(self) -> bool {
        matches!(self, DeliveryState::Sent | DeliveryState::Delivered)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(AlertState, CloseReason, DeliveryState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_lifecycle_only_moves_forward() {
        use AlertState::*;
        assert!(Held.can_move_to(Sending));
        assert!(Sending.can_move_to(Settled));
        assert!(Settled.can_move_to(Closed));
        assert!(Held.can_move_to(Closed));
        assert!(!Closed.can_move_to(Sending));
        assert!(!Settled.can_move_to(Sending));
        assert!(!Sending.can_move_to(Held));
        for s in [Held, Sending, Settled, Closed] {
            assert_eq!(AlertState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn delivery_reports_never_go_backwards() {
        use DeliveryState::*;
        assert!(Sent.can_move_to(Delivered));
        assert!(!Delivered.can_move_to(Sent));
        assert!(!Cancelled.can_move_to(Queued));
        assert!(Sending.can_move_to(Queued), "retry");
        assert!(!Sent.can_move_to(Queued));
        assert!(Held.can_move_to(Queued));
        assert!(!Held.can_move_to(Sent));
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
    }
}
