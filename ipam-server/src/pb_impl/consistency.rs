//! `pb::Consistency` → the replica's [`Consistency`]: unset means linearizable.

use ipam_proto::ipam::v1 as pb;

use super::error::Result;
use super::field;
use crate::replica::Consistency;

/// The read consistency a request's `consistency` field asks for.
pub fn consistency_from_pb(field: &str, value: i32) -> Result<Consistency> {
    let consistency: pb::Consistency = field::known_enum(field, "Consistency", value)?;
    Ok(match consistency {
        pb::Consistency::Unspecified | pb::Consistency::Linearizable => Consistency::Linearizable,
        pb::Consistency::Stale => Consistency::Stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb_impl::error::PbError;

    #[test]
    fn unset_is_linearizable() {
        assert_eq!(consistency_from_pb("consistency", 0), Ok(Consistency::Linearizable));
        assert_eq!(consistency_from_pb("consistency", 1), Ok(Consistency::Linearizable));
        assert_eq!(consistency_from_pb("consistency", 2), Ok(Consistency::Stale));
        assert_eq!(
            consistency_from_pb("consistency", 3),
            Err(PbError::UnknownEnum {
                field: "consistency".to_owned(),
                name: "Consistency",
                value: 3
            })
        );
    }
}
