//! The event-type vocabulary: CAEP 1.0, RISC 1.0, OAuth and SSF event-type URIs and their
//! classification ([`EventType`]). The one place these URIs are written.

/// RFC 8935 push delivery method URI.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery method URI.
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";
/// Namespace of CAEP 1.0 event types (`<CAEP><name>`).
pub const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
/// Namespace of RISC 1.0 event types.
pub const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
/// Namespace of the OAuth event types (Google's `tokens-revoked`).
pub const OAUTH: &str = "https://schemas.openid.net/secevent/oauth/event-type/";
/// Namespace of the SSF 1.0 event types (verification, stream-updated).
pub const SSF: &str = "https://schemas.openid.net/secevent/ssf/event-type/";
/// Namespace of the pre-1.0 SSE event types (verification only).
pub const SSE: &str = "https://schemas.openid.net/secevent/sse/event-type/";

/// URI of the SSF verification event (SSF §8.1.4).
pub const VERIFICATION_URI: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/verification";
/// URI of the SSF stream-updated event (SSF §8.1.5).
pub const STREAM_UPDATED_URI: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caep {
    SessionRevoked,
    CredentialChange,
    TokenClaimsChange,
    AssuranceLevelChange,
    DeviceComplianceChange,
    RiskLevelChange,
    SessionEstablished,
    SessionPresented,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risc {
    AccountCredentialChangeRequired,
    AccountPurged,
    AccountDisabled,
    AccountEnabled,
    IdentifierChanged,
    IdentifierRecycled,
    CredentialCompromise,
    OptIn,
    OptOutInitiated,
    OptOutCancelled,
    OptOutEffective,
    RecoveryActivated,
    RecoveryInformationChanged,
    SessionsRevoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuth {
    TokensRevoked,
    TokenRevoked,
}

/// An event-type URI, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Caep(Caep),
    Risc(Risc),
    OAuth(OAuth),
    /// `…/ssf/`, `…/risc/` or `…/sse/event-type/verification`.
    Verification,
    /// `…/ssf/` or `…/caep/event-type/stream-updated`.
    StreamUpdated,
    /// Vendor namespaces and event types we do not know: accepted, logged.
    Other,
}

impl EventType {
    pub fn from_uri(uri: &str) -> EventType {
        if let Some(n) = uri.strip_prefix(CAEP) {
            return match n {
                "session-revoked" => EventType::Caep(Caep::SessionRevoked),
                "credential-change" => EventType::Caep(Caep::CredentialChange),
                "token-claims-change" => EventType::Caep(Caep::TokenClaimsChange),
                "assurance-level-change" => EventType::Caep(Caep::AssuranceLevelChange),
                "device-compliance-change" => EventType::Caep(Caep::DeviceComplianceChange),
                "risk-level-change" => EventType::Caep(Caep::RiskLevelChange),
                "session-established" => EventType::Caep(Caep::SessionEstablished),
                "session-presented" => EventType::Caep(Caep::SessionPresented),
                "stream-updated" => EventType::StreamUpdated,
                _ => EventType::Other,
            };
        }
        if let Some(n) = uri.strip_prefix(RISC) {
            return match n {
                "account-credential-change-required" => {
                    EventType::Risc(Risc::AccountCredentialChangeRequired)
                }
                "account-purged" => EventType::Risc(Risc::AccountPurged),
                "account-disabled" => EventType::Risc(Risc::AccountDisabled),
                "account-enabled" => EventType::Risc(Risc::AccountEnabled),
                "identifier-changed" => EventType::Risc(Risc::IdentifierChanged),
                "identifier-recycled" => EventType::Risc(Risc::IdentifierRecycled),
                "credential-compromise" => EventType::Risc(Risc::CredentialCompromise),
                "opt-in" => EventType::Risc(Risc::OptIn),
                "opt-out-initiated" => EventType::Risc(Risc::OptOutInitiated),
                "opt-out-cancelled" => EventType::Risc(Risc::OptOutCancelled),
                "opt-out-effective" => EventType::Risc(Risc::OptOutEffective),
                "recovery-activated" => EventType::Risc(Risc::RecoveryActivated),
                "recovery-information-changed" => EventType::Risc(Risc::RecoveryInformationChanged),
                "sessions-revoked" => EventType::Risc(Risc::SessionsRevoked),
                "verification" => EventType::Verification,
                _ => EventType::Other,
            };
        }
        if let Some(n) = uri.strip_prefix(OAUTH) {
            return match n {
                "tokens-revoked" => EventType::OAuth(OAuth::TokensRevoked),
                "token-revoked" => EventType::OAuth(OAuth::TokenRevoked),
                _ => EventType::Other,
            };
        }
        if let Some(n) = uri.strip_prefix(SSF).or_else(|| uri.strip_prefix(SSE)) {
            return match n {
                "verification" => EventType::Verification,
                "stream-updated" => EventType::StreamUpdated,
                _ => EventType::Other,
            };
        }
        EventType::Other
    }

    /// Known CAEP, RISC and OAuth events need a subject; verification, stream-updated and
    /// unknown events do not (docs/protocols.md §3.2).
    pub fn requires_subject(self) -> bool {
        matches!(
            self,
            EventType::Caep(_) | EventType::Risc(_) | EventType::OAuth(_)
        )
    }

    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Caep(c) => match c {
                Caep::SessionRevoked => "session-revoked",
                Caep::CredentialChange => "credential-change",
                Caep::TokenClaimsChange => "token-claims-change",
                Caep::AssuranceLevelChange => "assurance-level-change",
                Caep::DeviceComplianceChange => "device-compliance-change",
                Caep::RiskLevelChange => "risk-level-change",
                Caep::SessionEstablished => "session-established",
                Caep::SessionPresented => "session-presented",
            },
            EventType::Risc(r) => match r {
                Risc::AccountCredentialChangeRequired => "account-credential-change-required",
                Risc::AccountPurged => "account-purged",
                Risc::AccountDisabled => "account-disabled",
                Risc::AccountEnabled => "account-enabled",
                Risc::IdentifierChanged => "identifier-changed",
                Risc::IdentifierRecycled => "identifier-recycled",
                Risc::CredentialCompromise => "credential-compromise",
                Risc::OptIn => "opt-in",
                Risc::OptOutInitiated => "opt-out-initiated",
                Risc::OptOutCancelled => "opt-out-cancelled",
                Risc::OptOutEffective => "opt-out-effective",
                Risc::RecoveryActivated => "recovery-activated",
                Risc::RecoveryInformationChanged => "recovery-information-changed",
                Risc::SessionsRevoked => "sessions-revoked",
            },
            EventType::OAuth(OAuth::TokensRevoked) => "tokens-revoked",
            EventType::OAuth(OAuth::TokenRevoked) => "token-revoked",
            EventType::Verification => "verification",
            EventType::StreamUpdated => "stream-updated",
            EventType::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_variants_are_recognised() {
        for u in [
            VERIFICATION_URI,
            "https://schemas.openid.net/secevent/risc/event-type/verification",
            "https://schemas.openid.net/secevent/sse/event-type/verification",
        ] {
            assert_eq!(EventType::from_uri(u), EventType::Verification, "{u}");
        }
        for u in [
            STREAM_UPDATED_URI,
            "https://schemas.openid.net/secevent/caep/event-type/stream-updated",
        ] {
            assert_eq!(EventType::from_uri(u), EventType::StreamUpdated, "{u}");
        }
        assert_eq!(
            EventType::from_uri(
                "https://schemas.okta.com/secevent/okta/event-type/user-risk-change"
            ),
            EventType::Other
        );
        assert_eq!(
            EventType::from_uri(&format!("{CAEP}future-event")),
            EventType::Other
        );
        assert_eq!(
            EventType::from_uri(&format!("{OAUTH}tokens-revoked")),
            EventType::OAuth(OAuth::TokensRevoked)
        );
    }
}
