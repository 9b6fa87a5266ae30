//! The metadata of one instance as EC2's tree of directories and leaves.
//!
//! The tree under a version (`latest/`, `2021-03-23/`, …) is built from the
//! [`InstanceMetadata`] on each request — it is small — and both listings and values come
//! from it, so a listing never names something that 404s. Entries are in EC2's order
//! (alphabetical); a directory's listing line is its name and `/`, except under `public-keys/`
//! where EC2 prints `0=<key name>` for the directory `0/`, and in the version directory, where
//! EC2 prints `dynamic` and `meta-data` bare.
//!
//! ```text
//! <version>/
//!   dynamic/instance-identity/{document, signature}
//!   meta-data/
//!     ami-id  ami-launch-index  hostname  instance-action  instance-id  instance-life-cycle
//!     instance-type  local-hostname  local-ipv4  mac
//!     network/interfaces/macs/<mac>/{device-number, interface-id, ipv4-associations/<eip>*,
//!         local-hostname, local-ipv4s, mac, owner-id, public-hostname*, public-ipv4s*,
//!         security-groups, subnet-ipv4-cidr-block}
//!     placement/{availability-zone, region}
//!     public-hostname*  public-ipv4*  public-keys/<n>/openssh-key**
//!     reservation-id  security-groups  services/{domain, partition}  tags/instance/<key>
//!   user-data***
//! ```
//! `*` only with an elastic IP; `**` only with keys; `***` only with user-data.

use std::collections::BTreeMap;

use crate::InstanceMetadata;
use crate::identity::ACCOUNT_ID;

/// A directory or a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir(Vec<Entry>),
    Leaf(Leaf),
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    /// How the listing prints it when that is not `name` (+ `/` for a directory).
    pub label: Option<String>,
    pub node: Node,
}

/// A value. The identity document and signature are produced by the service, which has the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leaf {
    Text(String),
    UserData(Vec<u8>),
    IdentityDocument,
    IdentitySignature,
}

impl Node {
    /// The node at `path` below this one.
    pub(crate) fn find(&self, path: &[String]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Dir(entries) => entries
                .iter()
                .find(|e| e.name == *first)
                .and_then(|e| e.node.find(rest)),
            Node::Leaf(_) => None,
        }
    }
}

/// A directory's listing: one line per entry, no trailing newline (like EC2).
pub(crate) fn listing(entries: &[Entry]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| match (&e.label, &e.node) {
            (Some(label), _) => label.clone(),
            (None, Node::Dir(_)) => format!("{}/", e.name),
            (None, Node::Leaf(_)) => e.name.clone(),
        })
        .collect();
    lines.join("\n")
}

fn leaf(name: &str, value: impl Into<String>) -> Entry {
    Entry {
        name: name.into(),
        label: None,
        node: Node::Leaf(Leaf::Text(value.into())),
    }
}

fn dir(name: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        name: name.into(),
        label: None,
        node: Node::Dir(entries),
    }
}

/// The tree under one version directory.
pub(crate) fn version_root(meta: &InstanceMetadata) -> Node {
    // EC2 lists the version directory's children without slashes.
    let mut entries = vec![
        bare_dir(
            "dynamic",
            vec![dir(
                "instance-identity",
                vec![
                    leaf_node("document", Leaf::IdentityDocument),
                    leaf_node("signature", Leaf::IdentitySignature),
                ],
            )],
        ),
        bare_dir("meta-data", meta_data(meta)),
    ];
    if let Some(data) = &meta.user_data {
        entries.push(leaf_node("user-data", Leaf::UserData(data.clone())));
    }
    Node::Dir(entries)
}

fn bare_dir(name: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        label: Some(name.into()),
        ..dir(name, entries)
    }
}

fn leaf_node(name: &str, value: Leaf) -> Entry {
    Entry {
        name: name.into(),
        label: None,
        node: Node::Leaf(value),
    }
}

fn meta_data(meta: &InstanceMetadata) -> Vec<Entry> {
    let mut entries = vec![
        leaf("ami-id", &meta.image_id),
        leaf("ami-launch-index", "0"),
        leaf("hostname", &meta.hostname),
        leaf("instance-action", "none"),
        leaf("instance-id", &meta.instance_id),
        leaf("instance-life-cycle", "on-demand"),
        leaf("instance-type", &meta.instance_type),
        leaf("local-hostname", &meta.hostname),
        leaf("local-ipv4", meta.local_ipv4.to_string()),
        leaf("mac", &meta.mac),
        dir(
            "network",
            vec![dir("interfaces", vec![dir("macs", vec![interface(meta)])])],
        ),
        dir(
            "placement",
            vec![
                leaf("availability-zone", &meta.availability_zone),
                leaf("region", &meta.region),
            ],
        ),
    ];
    if let Some(public) = meta.public_ipv4 {
        entries.push(leaf("public-hostname", public.to_string()));
        entries.push(leaf("public-ipv4", public.to_string()));
    }
    if !meta.public_keys.is_empty() {
        entries.push(dir("public-keys", public_keys(meta)));
    }
    entries.extend([
        leaf("reservation-id", derived_id("r-", &meta.instance_id)),
        leaf("security-groups", "default"),
        dir(
            "services",
            vec![leaf("domain", "amazonaws.com"), leaf("partition", "aws")],
        ),
        dir("tags", vec![dir("instance", tags(meta))]),
    ]);
    entries
}

fn interface(meta: &InstanceMetadata) -> Entry {
    let local = meta.local_ipv4.to_string();
    let mut entries = vec![
        leaf("device-number", "0"),
        leaf("interface-id", derived_id("eni-", &meta.instance_id)),
    ];
    if let Some(public) = meta.public_ipv4 {
        entries.push(dir("ipv4-associations", vec![leaf(&public.to_string(), &local)]));
    }
    entries.extend([
        leaf("local-hostname", &meta.hostname),
        leaf("local-ipv4s", &local),
        leaf("mac", &meta.mac),
        leaf("owner-id", ACCOUNT_ID),
    ]);
    if let Some(public) = meta.public_ipv4 {
        entries.push(leaf("public-hostname", public.to_string()));
        entries.push(leaf("public-ipv4s", public.to_string()));
    }
    entries.extend([
        leaf("security-groups", "default"),
        leaf("subnet-ipv4-cidr-block", &meta.subnet_cidr),
    ]);
    dir(&meta.mac, entries)
}

fn public_keys(meta: &InstanceMetadata) -> Vec<Entry> {
    meta.public_keys
        .iter()
        .enumerate()
        .map(|(i, (name, key))| Entry {
            name: i.to_string(),
            label: Some(format!("{i}={name}")),
            node: Node::Dir(vec![leaf("openssh-key", key)]),
        })
        .collect()
}

/// Tags sorted by key, first of duplicates kept, unaddressable keys left out.
fn tags(meta: &InstanceMetadata) -> Vec<Entry> {
    let mut by_key = BTreeMap::new();
    for (key, value) in &meta.tags {
        let addressable = !key.is_empty() && key != "." && key != ".." && !key.contains('/');
        if addressable {
            by_key.entry(key.as_str()).or_insert(value.as_str());
        }
    }
    by_key.into_iter().map(|(k, v)| leaf(k, v)).collect()
}

/// `i-0abc…` → `eni-0abc…` / `r-0abc…`: stable ids EC2 would have, derived from the instance.
fn derived_id(prefix: &str, instance_id: &str) -> String {
    format!("{prefix}{}", instance_id.strip_prefix("i-").unwrap_or(instance_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            image_id: "ami-1".into(),
            instance_type: "small".into(),
            hostname: "web-1".into(),
            local_ipv4: [10, 77, 0, 5].into(),
            public_ipv4: None,
            mac: "02:00:0a:4d:00:05".into(),
            subnet_cidr: "10.77.0.0/24".into(),
            region: "local".into(),
            availability_zone: "locala".into(),
            public_keys: vec![],
            tags: vec![
                ("b".into(), "2".into()),
                ("a".into(), "1".into()),
                ("a".into(), "dup".into()),
                ("x/y".into(), "no".into()),
                ("..".into(), "no".into()),
            ],
            user_data: None,
            launched_at: chrono::DateTime::UNIX_EPOCH,
            tokens_required: false,
        }
    }

    fn find<'a>(root: &'a Node, path: &str) -> Option<&'a Node> {
        let segments: Vec<String> = path.split('/').map(String::from).collect();
        root.find(&segments)
    }

    #[test]
    fn tags_are_sorted_deduplicated_and_addressable() {
        let root = version_root(&meta());
        let Some(Node::Dir(entries)) = find(&root, "meta-data/tags/instance") else {
            panic!("no tags directory");
        };
        assert_eq!(listing(entries), "a\nb");
        assert_eq!(
            find(&root, "meta-data/tags/instance/a"),
            Some(&Node::Leaf(Leaf::Text("1".into())))
        );
    }

    #[test]
    fn optional_entries_appear_only_when_there_is_something() {
        let mut m = meta();
        let root = version_root(&m);
        assert!(find(&root, "user-data").is_none());
        assert!(find(&root, "meta-data/public-ipv4").is_none());
        assert!(find(&root, "meta-data/public-keys").is_none());
        m.user_data = Some(b"#!".to_vec());
        m.public_ipv4 = Some([198, 51, 100, 7].into());
        m.public_keys = vec![("k".into(), "ssh-ed25519 AAAA k".into())];
        let root = version_root(&m);
        assert!(find(&root, "user-data").is_some());
        assert!(find(&root, "meta-data/public-ipv4").is_some());
        assert!(find(&root, "meta-data/public-keys/0/openssh-key").is_some());
    }

    #[test]
    fn leaves_have_no_children() {
        let root = version_root(&meta());
        assert!(find(&root, "meta-data/ami-id/x").is_none());
    }

    #[test]
    fn derived_ids() {
        assert_eq!(derived_id("eni-", "i-0abc"), "eni-0abc");
        assert_eq!(derived_id("r-", "odd"), "r-odd");
    }
}
