//! Instance sizes and how a request resolves to one.
//!
//! A request names a size (`m1.small`) or gives constraints (`cpus = 2, memory = "4GiB"`); the
//! constraints resolve to the *smallest* size of the target cloud that fits, where smaller means
//! less memory, then fewer CPUs, then the name (so resolution is deterministic).

use std::fmt;

use crate::FieldError;
use crate::name::truncate;

/// One instance type of a cloud.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSize {
    /// The cloud's own name for it (`t3.micro`, `small`).
    pub name: String,
    pub cpus: u32,
    #[schema(value_type = String, example = "2GiB")]
    pub memory: Memory,
}

impl InstanceSize {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || self.name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                "name",
                format!(
                    "{:?} is not a size name (1-64 characters, no spaces)",
                    truncate(&self.name)
                ),
            ));
        }
        if self.cpus == 0 {
            return Err(FieldError::new("cpus", "must be at least 1"));
        }
        if self.memory.mib() == 0 {
            return Err(FieldError::new("memory", "must be more than 0"));
        }
        Ok(())
    }

    fn order_key(&self) -> (u64, u32, &str) {
        (self.memory.mib(), self.cpus, &self.name)
    }

    pub fn fits(&self, cpus: u32, memory: Memory) -> bool {
        self.cpus >= cpus && self.memory >= memory
    }
}

/// An amount of memory in MiB. Written as `512MiB`, `4GiB`, `1TiB`, or a bare number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct Memory(u64);

impl<'de> serde::Deserialize<'de> for Memory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount of memory such as \"4GiB\" or a number of MiB")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Memory, E> {
                Memory::from_mib(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Memory, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("memory cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Memory, E> {
                Memory::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// 16 PiB: more than any instance type, small enough that arithmetic never overflows.
const MEMORY_MAX_MIB: u64 = 1 << 34;

impl Memory {
    pub fn from_mib(mib: u64) -> Result<Self, FieldError> {
        if mib > MEMORY_MAX_MIB {
            return Err(FieldError::new(
                "",
                format!("{mib} MiB is more memory than any instance has"),
            ));
        }
        Ok(Self(mib))
    }

    pub fn mib(self) -> u64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let bad = || {
            FieldError::new(
                "",
                format!(
                    "{:?} is not an amount of memory; write e.g. 512MiB or 4GiB",
                    truncate(s)
                ),
            )
        };
        if digits.is_empty() || digits.len() > 12 {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let factor = match unit.trim() {
            "" | "M" | "MiB" | "Mi" | "MB" => 1,
            "G" | "GiB" | "Gi" | "GB" => 1024,
            "T" | "TiB" | "Ti" | "TB" => 1024 * 1024,
            _ => return Err(bad()),
        };
        Self::from_mib(n.checked_mul(factor).ok_or_else(bad)?)
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 && self.0.is_multiple_of(1024) {
            write!(f, "{}GiB", self.0 / 1024)
        } else {
            write!(f, "{}MiB", self.0)
        }
    }
}

impl From<Memory> for String {
    fn from(m: Memory) -> String {
        m.to_string()
    }
}

/// What a template or server asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SizeRequest {
    /// A size the cloud names (`t3.micro`).
    Named(String),
    /// The smallest size with at least these resources.
    Constraints(SizeConstraints),
}

/// Minimum resources; resolves to the smallest size that has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SizeConstraints {
    #[serde(default = "one")]
    pub cpus: u32,
    #[schema(value_type = String, example = "1GiB")]
    pub memory: Memory,
}

fn one() -> u32 {
    1
}

/// A size is a string (a name) or a table of constraints; the error for a bad table names the
/// bad field instead of serde's generic "did not match any variant".
impl<'de> serde::Deserialize<'de> for SizeRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SizeRequest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size name or { cpus = N, memory = \"4GiB\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeRequest, E> {
                Ok(SizeRequest::Named(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SizeRequest, A::Error> {
                let c = <SizeConstraints as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(SizeRequest::Constraints(c))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a request could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size {name:?} does not exist on this cloud; it has {}", available.join(", "))]
    Unknown { name: String, available: Vec<String> },
    #[error("no size on this cloud has at least {cpus} CPUs and {memory}; the largest is {largest}")]
    NoneFits { cpus: u32, memory: Memory, largest: String },
    #[error("this cloud has no sizes")]
    NoSizes,
}

impl SizeRequest {
    /// Resolve against a cloud's sizes.
    pub fn resolve<'a>(&self, sizes: &'a [InstanceSize]) -> Result<&'a InstanceSize, SizeError> {
        if sizes.is_empty() {
            return Err(SizeError::NoSizes);
        }
        match self {
            SizeRequest::Named(name) => sizes
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| SizeError::Unknown {
                    name: truncate(name),
                    available: sizes.iter().map(|s| s.name.clone()).collect(),
                }),
            SizeRequest::Constraints(SizeConstraints { cpus, memory }) => sizes
                .iter()
                .filter(|s| s.fits(*cpus, *memory))
                .min_by(|a, b| a.order_key().cmp(&b.order_key()))
                .ok_or_else(|| {
                    let largest = sizes.iter().max_by(|a, b| a.order_key().cmp(&b.order_key()));
                    SizeError::NoneFits {
                        cpus: *cpus,
                        memory: *memory,
                        largest: largest
                            .map(|s| format!("{} ({} CPUs, {})", s.name, s.cpus, s.memory))
                            .unwrap_or_default(),
                    }
                }),
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            SizeRequest::Named(n) if n.is_empty() || n.len() > 64 => {
                Err(FieldError::new("size", "a size name has 1-64 characters"))
            }
            SizeRequest::Constraints(SizeConstraints { cpus: 0, .. }) => {
                Err(FieldError::new("size.cpus", "must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for SizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeRequest::Named(n) => f.write_str(n),
            SizeRequest::Constraints(SizeConstraints { cpus, memory }) => write!(f, "cpus>={cpus},memory>={memory}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn size(name: &str, cpus: u32, mib: u64) -> InstanceSize {
        InstanceSize {
            name: name.into(),
            cpus,
            memory: Memory(mib),
        }
    }

    fn catalog() -> Vec<InstanceSize> {
        vec![
            size("large", 4, 8192),
            size("small", 1, 1024),
            size("medium", 2, 4096),
            size("highcpu", 8, 2048),
        ]
    }

    #[test]
    fn memory_parses_units() {
        assert_eq!(Memory::parse("512MiB").unwrap().mib(), 512);
        assert_eq!(Memory::parse("4GiB").unwrap().mib(), 4096);
        assert_eq!(Memory::parse("2G").unwrap().mib(), 2048);
        assert_eq!(Memory::parse("1TiB").unwrap().mib(), 1 << 20);
        assert_eq!(Memory::parse("300").unwrap().mib(), 300);
        for bad in ["", "GiB", "4 parsecs", "-1GiB", "1.5GiB", "99999999999999TiB", "4GiBB"] {
            assert!(Memory::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Memory(4096).to_string(), "4GiB");
        assert_eq!(Memory(1500).to_string(), "1500MiB");
    }

    #[test]
    fn named_and_constrained_resolution() {
        let c = catalog();
        assert_eq!(SizeRequest::Named("medium".into()).resolve(&c).unwrap().name, "medium");
        let req = SizeRequest::Constraints(SizeConstraints {
            cpus: 2,
            memory: Memory(2048),
        });
        // highcpu (8 CPUs, 2 GiB) has less memory than medium, so it is the smaller fit.
        assert_eq!(req.resolve(&c).unwrap().name, "highcpu");
        let req = SizeRequest::Constraints(SizeConstraints {
            cpus: 1,
            memory: Memory(3000),
        });
        assert_eq!(req.resolve(&c).unwrap().name, "medium");
        let err = SizeRequest::Constraints(SizeConstraints {
            cpus: 16,
            memory: Memory(1),
        })
        .resolve(&c)
        .unwrap_err();
        assert!(err.to_string().contains("the largest is large"), "{err}");
        let err = SizeRequest::Named("huge".into()).resolve(&c).unwrap_err();
        assert!(
            err.to_string().contains("huge") && err.to_string().contains("small"),
            "{err}"
        );
    }

    #[test]
    fn size_request_from_toml_forms() {
        #[derive(serde::Deserialize)]
        struct T {
            size: SizeRequest,
        }
        let t: T = toml::from_str("size = \"m1.small\"").unwrap();
        assert_eq!(t.size, SizeRequest::Named("m1.small".into()));
        let t: T = toml::from_str("size = { cpus = 2, memory = \"4GiB\" }").unwrap();
        let err = toml::from_str::<T>("size = { cpu = 2, memory = 1 }").err().unwrap();
        assert!(err.to_string().contains("unknown field `cpu`"), "{err}");
        assert_eq!(
            t.size,
            SizeRequest::Constraints(SizeConstraints {
                cpus: 2,
                memory: Memory(4096)
            })
        );
    }

    fn sizes() -> impl Strategy<Value = Vec<InstanceSize>> {
        prop::collection::vec((1u32..64, 1u64..262_144), 1..20).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (c, m))| size(&format!("s{i}"), c, m))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn resolution_picks_the_smallest_fit(cat in sizes(), cpus in 1u32..64, mib in 1u64..262_144) {
            let req = SizeRequest::Constraints(SizeConstraints { cpus, memory: Memory(mib) });
            match req.resolve(&cat) {
                Ok(chosen) => {
                    prop_assert!(chosen.fits(cpus, Memory(mib)));
                    for other in cat.iter().filter(|s| s.fits(cpus, Memory(mib))) {
                        prop_assert!(chosen.order_key() <= other.order_key());
                    }
                }
                Err(SizeError::NoneFits { .. }) => {
                    prop_assert!(cat.iter().all(|s| !s.fits(cpus, Memory(mib))));
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn memory_round_trips(mib in 0u64..(1 << 30)) {
            let m = Memory(mib);
            prop_assert_eq!(Memory::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn memory_parser_never_panics(s in "\\PC{0,40}") {
            let _ = Memory::parse(&s);
        }
    }
}
