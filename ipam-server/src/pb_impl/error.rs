//! Why a protobuf message could not become a domain value. Every variant names the field (as a
//! dotted path from the request, e.g. `subnet_config.subnet_cidr`) and what is wrong with it, and
//! every one is the client's fault: it maps to `INVALID_ARGUMENT`.

use tonic::Status;

/// `Result` with [`PbError`].
pub type Result<T, E = PbError> = std::result::Result<T, E>;

/// A protobuf field that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbError {
    /// A required message field is unset.
    #[error("{field} is required")]
    Missing {
        /// The field.
        field: String,
    },
    /// A required string or list is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: String,
    },
    /// A string is not a dotted-quad IPv4 address.
    #[error("{field}: {value:?} is not an IPv4 address (expected dotted-quad form, e.g. 100.64.3.48)")]
    InvalidIp {
        /// The field.
        field: String,
        /// As sent.
        value: String,
    },
    /// A string is not an IPv4 CIDR.
    #[error("{field}: {value:?} is not an IPv4 CIDR: {why}")]
    InvalidCidr {
        /// The field.
        field: String,
        /// As sent.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// An enum field is 0 (`…_UNSPECIFIED`) where a value is required.
    #[error("{field} must be set ({name} is UNSPECIFIED)")]
    Unspecified {
        /// The field.
        field: String,
        /// The enum's protobuf name.
        name: &'static str,
    },
    /// An enum field holds a number the protocol does not define.
    #[error("{field}: {value} is not a known {name} value")]
    UnknownEnum {
        /// The field.
        field: String,
        /// The enum's protobuf name.
        name: &'static str,
        /// The number sent.
        value: i32,
    },
    /// An enum value that exists but is not accepted here.
    #[error("{field}: {value} is not allowed here: {why}")]
    EnumNotAllowed {
        /// The field.
        field: String,
        /// The value's protobuf name.
        value: &'static str,
        /// Why, and what is allowed.
        why: &'static str,
    },
    /// A number outside the range the field allows.
    #[error("{field}: {value} is out of range: {why}")]
    OutOfRange {
        /// The field.
        field: String,
        /// As sent.
        value: String,
        /// The allowed range.
        why: String,
    },
    /// A request id that is empty, too long, or has spaces or control characters.
    #[error("{field}: {value:?} is not a request id: use 1 to 64 printable ASCII characters without spaces")]
    InvalidRequestId {
        /// The field.
        field: String,
        /// As sent.
        value: String,
    },
    /// Fields that contradict each other (e.g. both or neither of two alternatives).
    #[error("{fields}: {why}")]
    Conflict {
        /// The fields, e.g. `count, ips`.
        fields: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A page token this server did not issue (or issued for another listing).
    #[error("page_token: {token:?} is not a page token of this listing; pass a previous reply's next_page_token")]
    InvalidPageToken {
        /// As sent.
        token: String,
    },
    /// An intent token this server did not issue for the named ENI.
    #[error("{field}: {token:?} is not the intent token of a PlanIps on ENI {eni_ref}")]
    InvalidIntentToken {
        /// The field.
        field: String,
        /// As sent.
        token: String,
        /// The ENI the request names.
        eni_ref: u64,
    },
}

impl PbError {
    /// The same error, with its field named from `parent` (`limits` → `node.limits`): lets a
    /// conversion of a nested message name the field from the top of the request.
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        let nest = |field: String| format!("{parent}.{field}");
        match self {
            Self::Missing { field } => Self::Missing { field: nest(field) },
            Self::Empty { field } => Self::Empty { field: nest(field) },
            Self::InvalidIp { field, value } => Self::InvalidIp {
                field: nest(field),
                value,
            },
            Self::InvalidCidr { field, value, why } => Self::InvalidCidr {
                field: nest(field),
                value,
                why,
            },
            Self::Unspecified { field, name } => Self::Unspecified {
                field: nest(field),
                name,
            },
            Self::UnknownEnum { field, name, value } => Self::UnknownEnum {
                field: nest(field),
                name,
                value,
            },
            Self::EnumNotAllowed { field, value, why } => Self::EnumNotAllowed {
                field: nest(field),
                value,
                why,
            },
            Self::OutOfRange { field, value, why } => Self::OutOfRange {
                field: nest(field),
                value,
                why,
            },
            Self::InvalidRequestId { field, value } => Self::InvalidRequestId {
                field: nest(field),
                value,
            },
            Self::Conflict { fields, why } => Self::Conflict {
                fields: fields
                    .split(", ")
                    .map(|f| nest(f.to_owned()))
                    .collect::<Vec<_>>()
                    .join(", "),
                why,
            },
            Self::InvalidIntentToken { field, token, eni_ref } => Self::InvalidIntentToken {
                field: nest(field),
                token,
                eni_ref,
            },
            other @ Self::InvalidPageToken { .. } => other,
        }
    }

    /// The field (or fields) the error is about.
    pub fn field(&self) -> &str {
        match self {
            Self::Missing { field }
            | Self::Empty { field }
            | Self::InvalidIp { field, .. }
            | Self::InvalidCidr { field, .. }
            | Self::Unspecified { field, .. }
            | Self::UnknownEnum { field, .. }
            | Self::EnumNotAllowed { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::InvalidRequestId { field, .. }
            | Self::InvalidIntentToken { field, .. } => field,
            Self::Conflict { fields, .. } => fields,
            Self::InvalidPageToken { .. } => "page_token",
        }
    }
}

impl From<PbError> for Status {
    fn from(error: PbError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn within_names_the_nested_field() {
        let error = PbError::Missing {
            field: "limits".to_owned(),
        }
        .within("node");
        assert_eq!(error.field(), "node.limits");
        assert_eq!(error.to_string(), "node.limits is required");
        let conflict = PbError::Conflict {
            fields: "count, ips".to_owned(),
            why: "exactly one",
        }
        .within("req");
        assert_eq!(conflict.field(), "req.count, req.ips");
    }

    #[test]
    fn every_error_is_invalid_argument_naming_the_field() {
        let status = Status::from(PbError::InvalidIp {
            field: "primary_ip".to_owned(),
            value: "300.1.1.1".to_owned(),
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("primary_ip: \"300.1.1.1\""),
            "{}",
            status.message()
        );
    }
}
