//! The protobuf messages of `proto/tiendo/v1`, generated at build time by prost.

#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tiendo.v1.rs"));
}

pub use v1::{Channel, CodeScheme, ProcedureCompleted, RecordDigitized};

/// The two event streams tiendo consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Records,
    Procedures,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Records, Kind::Procedures];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Records => "record_digitized",
            Kind::Procedures => "procedure_completed",
        }
    }

    /// The other topic's kind.
    pub fn other(self) -> Kind {
        match self {
            Kind::Records => Kind::Procedures,
            Kind::Procedures => Kind::Records,
        }
    }

    /// Short form used in Redis keys.
    pub fn letter(self) -> char {
        match self {
            Kind::Records => 'r',
            Kind::Procedures => 'p',
        }
    }
}

/// Channel names as they appear in counters, metrics and reports.
pub fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::OnlineEndToEnd => "online",
        Channel::PartlyOnline => "partly_online",
        Channel::InPerson => "in_person",
        Channel::Unspecified => "unspecified",
    }
}

/// The channels a valid event can have, in display order.
pub const CHANNELS: [Channel; 3] = [
    Channel::OnlineEndToEnd,
    Channel::PartlyOnline,
    Channel::InPerson,
];
