//! The label sets of the metrics, and their values in lower case (`intercepted`, `5xx`), as
//! Prometheus convention has them.

use std::borrow::Cow;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// What a registry request was for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Token,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub registry: String,
    /// Borrowed for the standard methods (no allocation per request).
    pub method: Cow<'static, str>,
    pub kind: Kind,
    /// "2xx", "3xx", "4xx", "5xx" ([`status_class`]).
    pub status: &'static str,
}

/// A status code's class as the `status` label has it ("2xx"; HTTP codes are 100..=999).
pub fn status_class(code: u16) -> &'static str {
    const CLASSES: [&str; 10] = [
        "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
    ];
    CLASSES[usize::from(code / 100).min(9)]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub registry: String,
    pub kind: Kind,
}

/// Where response bytes came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
    Local,
    /// Another appliance of the fleet.
    Peer,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

/// Why an upstream request failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Tls,
    Timeout,
    ServerError,
    RateLimited,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub registry: String,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Revalidation {
    Unchanged,
    Changed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevalidationLabels {
    pub result: Revalidation,
}

/// A tag request by the `[[cache.rule]]` that decided it: `rule` is its number (1, 2, … in file
/// order) or `default` (`cache.manifest_ttl`), so the label is bounded by the config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TagRuleLabels {
    pub rule: String,
    pub served: TagAnswer,
}

/// How a tag request was answered (the status page's columns).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TagAnswer {
    Hit,
    Revalidated,
    Upstream,
    Stale,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DnsOutcome {
    Intercepted,
    Forwarded,
    Nxdomain,
    Refused,
    /// Refused because the client is outside `access.allow` (those hickory refuses first are
    /// not counted).
    Denied,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The query type ("A", "AAAA", …).
    pub qtype: String,
    pub outcome: DnsOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// No certificate for the name asked (not ours, or no SNI).
    Refused,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub outcome: Handshake,
}

/// A TCP listener, for the connection metrics.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    Https,
    Mirror,
    Admin,
}

/// Why a connection was closed right after accept.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Rejected {
    /// The client is outside `access.allow`.
    Access,
    /// `limits.max_connections` (or the admin cap) was reached.
    Limit,
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Expired {
    /// Nothing arrived within `limits.first_byte_timeout`.
    FirstByte,
    /// No request in flight for `limits.idle_timeout`.
    Idle,
    /// Idle when a new connection needed its slot at `limits.max_connections`.
    Evicted,
    /// A request in flight, but no byte moved for five minutes.
    Stalled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    pub listener: Listener,
    pub reason: Rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiredLabels {
    pub listener: Listener,
    pub timeout: Expired,
}

/// What one fetch from a registry's mirror came to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MirrorResult {
    /// The bytes matched the digest and were stored.
    Verified,
    /// The bytes did not match the digest (or its announced size): refused, not stored.
    Mismatch,
    /// No object: unreachable, an error status, a body cut short, no room.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// The mirror's `host[:port]`, one of the configured ones (a bounded set).
    pub mirror: String,
    pub result: MirrorResult,
}

/// Why a registry's mirror was not asked (`proxy/fallback/memory.rs`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MirrorSkip {
    /// Its bytes for this digest did not match, recently.
    Mismatch,
    /// It failed repeatedly (unreachable, 5xx, 429) and is backed off.
    Backoff,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorSkipLabels {
    /// The mirror's `host[:port]`, one of the configured ones (a bounded set).
    pub mirror: String,
    pub reason: MirrorSkip,
}

/// Label values in lower case (`intercepted`, `server_error`), as Prometheus convention has them.
macro_rules! label_values {
    ($($ty:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    )+};
}

label_values! {
    Kind { Manifest => "manifest", Blob => "blob", Token => "token", Other => "other" }
    Source { Cache => "cache", Upstream => "upstream", Local => "local", Peer => "peer" }
    Reason {
        Connect => "connect", Tls => "tls", Timeout => "timeout",
        ServerError => "5xx", RateLimited => "429", Other => "other",
    }
    Revalidation { Unchanged => "unchanged", Changed => "changed" }
    TagAnswer { Hit => "hit", Revalidated => "revalidated", Upstream => "upstream", Stale => "stale" }
    DnsOutcome {
        Intercepted => "intercepted", Forwarded => "forwarded", Nxdomain => "nxdomain",
        Refused => "refused", Denied => "denied", Error => "error",
    }
    Handshake { Ok => "ok", Refused => "refused", Failed => "failed" }
    Listener { Https => "https", Mirror => "mirror", Admin => "admin" }
    Rejected { Access => "access", Limit => "limit" }
    MirrorResult { Verified => "verified", Mismatch => "mismatch", Failed => "failed" }
    MirrorSkip { Mismatch => "mismatch", Backoff => "backoff" }
    Expired { FirstByte => "first_byte", Idle => "idle", Evicted => "evicted", Stalled => "stalled" }
    PeerResult { Served => "served", TakenOver => "taken_over", Refused => "refused" }
}

/// A `[[warm]]` job (its number in the config, from 1), and how its run ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarmLabels {
    pub job: String,
    /// "ok" or "failed".
    pub result: String,
}

/// A `[[warm]]` job's objects: "fetched" from the upstream now, or "cached" already.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarmObjectLabels {
    pub job: String,
    pub how: String,
}

/// A `[[warm]]` job alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarmJobLabels {
    pub job: String,
}

/// What one fetch from the object's owner in the fleet came to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PeerResult {
    /// The owner served the object, verified here.
    Served,
    /// The owner could not serve it (unreachable, silent, a 5xx, a 429 or another answer that is
    /// not a refusal, a body cut short): this appliance went to the upstream.
    TakenOver,
    /// The owner's answer was a refusal (its upstream's 401, 403, 404…), relayed to the client.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The owner's `host:port`, one of `fleet.peers` (a bounded set).
    pub peer: String,
    pub result: PeerResult,
}
