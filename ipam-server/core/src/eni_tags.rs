//! The tags and description every ENI the cluster manages carries in EC2, shared by the server
//! (which hands them out with each plan) and the agent (which creates the ENI with them, and
//! finds its own ENIs by them after a crash). One definition, so the two can never disagree.

/// Tag key: who manages the ENI (value [`MANAGED_BY`]).
pub const MANAGED_BY_KEY: &str = "ipam/managed-by";
/// Tag value of [`MANAGED_BY_KEY`], and the first word of every managed ENI's description.
pub const MANAGED_BY: &str = "ipam-server";
/// Tag key: the cluster, named by its settings' `token_prefix` (unique per cluster).
pub const CLUSTER: &str = "ipam/cluster";
/// Tag key: the Kubernetes node the ENI was planned for.
pub const NODE: &str = "ipam/node";
/// Tag key: the EC2 instance the ENI was planned for.
pub const INSTANCE_ID: &str = "ipam/instance-id";
/// Tag key: the server's handle of the ENI (`eni_ref`).
pub const ENI_REF: &str = "ipam/eni-ref";
/// Tag key: the ENI's intent token (its `CreateNetworkInterface` ClientToken).
pub const INTENT_TOKEN: &str = "ipam/intent-token";

/// EC2's longest ENI description.
pub const MAX_DESCRIPTION: usize = 255;

/// What a planned ENI is tagged with.
#[derive(Debug, Clone, Copy)]
pub struct EniTagging<'a> {
    /// The cluster's token prefix.
    pub cluster: &'a str,
    /// The node name.
    pub node: &'a str,
    /// The node's EC2 instance id.
    pub instance_id: &'a str,
    /// The server's handle.
    pub eni_ref: u64,
    /// The intent token.
    pub token: &'a str,
    /// `secondary`, `trunk` or `branch`.
    pub kind: &'a str,
}

impl EniTagging<'_> {
    /// The tags, in a fixed order.
    pub fn tags(&self) -> Vec<(&'static str, String)> {
        vec![
            (MANAGED_BY_KEY, MANAGED_BY.to_owned()),
            (CLUSTER, self.cluster.to_owned()),
            (NODE, self.node.to_owned()),
            (INSTANCE_ID, self.instance_id.to_owned()),
            (ENI_REF, self.eni_ref.to_string()),
            (INTENT_TOKEN, self.token.to_owned()),
        ]
    }

    /// The description (at most EC2's 255 characters).
    pub fn description(&self) -> String {
        let mut text = format!("{MANAGED_BY} {} ENI {} of node {}", self.kind, self.token, self.node);
        if text.len() > MAX_DESCRIPTION {
            let mut end = MAX_DESCRIPTION;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }
}
