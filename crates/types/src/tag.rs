//! Machine tags (`namespace:predicate=value`) and the selectors that query them.
//!
//! Tags are how servers find each other: an app server carries `lb:pool=www`, and a load
//! balancer selects `lb:pool=www` to build its pool. Syntax, following RightScale's machine tags:
//!
//! ```text
//! tag       = namespace ":" predicate "=" value
//! namespace = predicate = 1*64 ( ALPHA / DIGIT / "_" / "-" / "." ), starting with ALPHA/DIGIT
//! value     = 1*255 bytes of printable text (no control characters)
//!
//! selector  = term *( "," term )          ; every term must hold (AND)
//! term      = [ "!" ] namespace ":" ( predicate / "*" ) [ "=" pattern ]
//! pattern   = value in which "*" matches any run of characters and "?" any one character
//! ```
//!
//! `ns:pred` (or `ns:pred=*`) selects servers that have the tag with any value; `ns:*` selects
//! any tag in the namespace; `!term` selects servers that have no matching tag. Commas separate
//! terms, so a selector pattern cannot contain a comma (a tag value can).

use std::fmt;
use std::str::FromStr;

use crate::FieldError;
use crate::name::truncate;

pub const PART_MAX: usize = 64;
pub const VALUE_MAX: usize = 255;
pub const SELECTOR_TERMS_MAX: usize = 32;

/// One machine tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag {
    namespace: String,
    predicate: String,
    value: String,
}

fn check_part(what: &str, s: &str, wildcard_ok: bool) -> Result<(), String> {
    if wildcard_ok && s == "*" {
        return Ok(());
    }
    if s.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if s.len() > PART_MAX {
        return Err(format!(
            "the {what} is {} characters long; the limit is {PART_MAX}",
            s.len()
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "the {what} {:?} must start with a letter or digit",
            truncate(s)
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "the {what} {:?} contains {c:?}; use letters, digits, '_', '-' and '.'",
            truncate(s)
        ));
    }
    Ok(())
}

fn check_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the value is empty (write `namespace:predicate=value`)".into());
    }
    if s.len() > VALUE_MAX {
        return Err(format!("the value is {} bytes long; the limit is {VALUE_MAX}", s.len()));
    }
    if s.chars().any(char::is_control) {
        return Err("the value contains a control character".into());
    }
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err("the value starts or ends with white space".into());
    }
    Ok(())
}

fn tag_error(input: &str, problem: String) -> FieldError {
    FieldError::new("", format!("invalid tag {:?}: {problem}", truncate(input)))
}

impl Tag {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let (ns, rest) = s
            .split_once(':')
            .ok_or_else(|| tag_error(s, "expected `namespace:predicate=value`".into()))?;
        let (pred, value) = rest
            .split_once('=')
            .ok_or_else(|| tag_error(s, "expected `=value` after the predicate".into()))?;
        Self::new(ns, pred, value).map_err(|e| tag_error(s, e.problem))
    }

    pub fn new(namespace: &str, predicate: &str, value: &str) -> Result<Self, FieldError> {
        let check = check_part("namespace", namespace, false)
            .and_then(|_| check_part("predicate", predicate, false))
            .and_then(|_| check_value(value));
        check.map_err(|p| FieldError::new("", p))?;
        Ok(Self {
            namespace: namespace.into(),
            predicate: predicate.into(),
            value: value.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn predicate(&self) -> &str {
        &self.predicate
    }
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a server's own agent may add or remove this tag. Namespaces that decide what
    /// *other* servers do are reserved for users (through the API or a template): `lb` (pool
    /// membership, ports and health checks: an agent that could set them would steer its load
    /// balancer's traffic), `stratus` (the control plane's own) and `array`, except the
    /// `array:vote` tag members vote with ([`AGENT_WRITABLE_IN_RESERVED`]).
    /// Compared without regard to case, so `LB:pool` is reserved too (nothing reads it, but it
    /// would look like the real thing to a person).
    pub fn agent_may_set(&self) -> bool {
        let ns = self.namespace.to_ascii_lowercase();
        !RESERVED_FOR_USERS.contains(&ns.as_str())
            || AGENT_WRITABLE_IN_RESERVED.contains(&(ns.as_str(), self.predicate.as_str()))
    }
}

/// Tag namespaces a server's agent cannot change on its own server (see [`Tag::agent_may_set`]).
pub const RESERVED_FOR_USERS: &[&str] = &["lb", "stratus", "array"];
/// The `namespace:predicate` pairs of reserved namespaces that agents may still set.
pub const AGENT_WRITABLE_IN_RESERVED: &[(&str, &str)] = &[("array", "vote")];

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.namespace, self.predicate, self.value)
    }
}

impl FromStr for Tag {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Tag {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> String {
        t.to_string()
    }
}

crate::string_schema!(Tag, "Tag", "A machine tag `namespace:predicate=value`.", "lb:pool=www");

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// `!term`: the server must have no matching tag.
    pub negated: bool,
    pub namespace: String,
    /// `None` for `ns:*` (any predicate).
    pub predicate: Option<String>,
    /// `None` for presence (`ns:pred` or `ns:pred=*`); a glob with `*` and `?` otherwise.
    pub pattern: Option<String>,
}

impl Term {
    fn parse(s: &str) -> Result<Self, String> {
        let (negated, body) = match s.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, s),
        };
        let (ns, rest) = body
            .split_once(':')
            .ok_or_else(|| format!("{:?} is not `namespace:predicate[=value]`", truncate(body)))?;
        let (pred, pattern) = match rest.split_once('=') {
            Some((p, v)) => (p, Some(v)),
            None => (rest, None),
        };
        check_part("namespace", ns, false)?;
        check_part("predicate", pred, true)?;
        let pattern = match pattern {
            None | Some("*") => None,
            Some(v) => {
                check_value(v)?;
                Some(v.to_string())
            }
        };
        Ok(Self {
            negated,
            namespace: ns.to_string(),
            predicate: (pred != "*").then(|| pred.to_string()),
            pattern,
        })
    }

    /// Does this one tag satisfy the term's tag pattern (ignoring negation)?
    pub fn matches_tag(&self, tag: &Tag) -> bool {
        tag.namespace == self.namespace
            && self.predicate.as_deref().is_none_or(|p| p == tag.predicate)
            && self.pattern.as_deref().is_none_or(|p| glob_match(p, &tag.value))
    }

    /// Does a server with these tags satisfy the term?
    pub fn holds_for(&self, tags: &[Tag]) -> bool {
        tags.iter().any(|t| self.matches_tag(t)) != self.negated
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        write!(f, "{}:{}", self.namespace, self.predicate.as_deref().unwrap_or("*"))?;
        if let Some(p) = &self.pattern {
            write!(f, "={p}")?;
        }
        Ok(())
    }
}

/// A tag selector: terms that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let bad = |p: String| FieldError::new("", format!("invalid tag selector {:?}: {p}", truncate(s)));
        if s.trim().is_empty() {
            return Err(bad("it is empty".into()));
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() > SELECTOR_TERMS_MAX {
            return Err(bad(format!("{} terms; the limit is {SELECTOR_TERMS_MAX}", parts.len())));
        }
        let terms = parts
            .into_iter()
            .map(Term::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        Ok(Self { terms })
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    pub fn matches(&self, tags: &[Tag]) -> bool {
        self.terms.iter().all(|t| t.holds_for(tags))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.terms.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Selector {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Selector {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

crate::string_schema!(
    Selector,
    "Selector",
    "Tag selector: comma-separated terms that must all hold; `ns:pred=value`, `ns:pred=glob*`, `ns:pred` (present), `ns:*`, `!term` (absent).",
    "lb:pool=www,!maint:drain"
);

/// Glob match with `*` (any run) and `?` (one character), linear time (no backtracking blow-up).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| Tag::parse(t).unwrap()).collect()
    }

    #[test]
    fn agents_may_not_set_reserved_namespaces() {
        let t = |s: &str| Tag::parse(s).unwrap();
        for reserved in [
            "lb:pool=www",
            "lb:check=/",
            "stratus:x=y",
            "array:desired=9",
            "LB:pool=www",
        ] {
            assert!(!t(reserved).agent_may_set(), "{reserved}");
        }
        for free in ["array:vote=grow", "app:role=primary", "lbx:pool=www", "lb2:check=/"] {
            assert!(t(free).agent_may_set(), "{free}");
        }
    }

    #[test]
    fn parses_and_prints_a_tag() {
        let t = Tag::parse("lb:pool=www").unwrap();
        assert_eq!((t.namespace(), t.predicate(), t.value()), ("lb", "pool", "www"));
        assert_eq!(t.to_string(), "lb:pool=www");
        // A value may itself contain ':' and '='.
        let t = Tag::parse("app:url=http://x:80/?a=b").unwrap();
        assert_eq!(t.value(), "http://x:80/?a=b");
    }

    #[test]
    fn rejects_malformed_tags_naming_the_problem() {
        for (bad, why) in [
            ("nopredicate", "namespace:predicate=value"),
            ("lb:pool", "`=value`"),
            ("lb:pool=", "value is empty"),
            (":pool=x", "namespace is empty"),
            ("lb:=x", "predicate is empty"),
            ("l b:pool=x", "contains ' '"),
            ("lb:po*l=x", "contains '*'"),
            ("lb:pool=a\nb", "control character"),
        ] {
            let e = Tag::parse(bad).unwrap_err();
            assert!(e.problem.contains(why), "{bad:?} -> {e}");
        }
        let long = format!("lb:pool={}", "v".repeat(256));
        assert!(Tag::parse(&long).unwrap_err().problem.contains("limit is 255"));
    }

    #[test]
    fn selector_forms() {
        let t = tags(&["lb:pool=www", "lb:port=8080", "env:stage=prod-eu"]);
        for (sel, want) in [
            ("lb:pool=www", true),
            ("lb:pool=api", false),
            ("lb:pool", true),
            ("lb:pool=*", true),
            ("lb:*", true),
            ("lb:*=80*", true),
            ("db:*", false),
            ("env:stage=prod-*", true),
            ("env:stage=prod-??", true),
            ("env:stage=prod-?", false),
            ("lb:pool=www,env:stage=prod*", true),
            ("lb:pool=www,env:stage=dev*", false),
            ("!maint:drain", true),
            ("lb:pool=www, !lb:port", false),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&t), want, "{sel}");
        }
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in ["", "  ", "lb", "lb:pool=www,", ":x", "lb:p q", "!", "lb:pool=a\u{7}"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["a:b"; 33].join(",");
        assert!(Selector::parse(&many).unwrap_err().problem.contains("limit is 32"));
    }

    #[test]
    fn glob_is_linear_on_hostile_patterns() {
        let text = "a".repeat(2_000);
        let pat = format!("{}b", "*a".repeat(100));
        assert!(!glob_match(&pat, &text));
    }

    fn part() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}"
    }
    fn value() -> impl Strategy<Value = String> {
        "[^\\p{Cc}\\s,*?]([^\\p{Cc},*?]{0,38}[^\\p{Cc}\\s,*?])?"
    }

    proptest! {
        #[test]
        fn tag_round_trips(ns in part(), pred in part(), v in value()) {
            let s = format!("{ns}:{pred}={v}");
            let t = Tag::parse(&s).unwrap();
            prop_assert_eq!(t.to_string(), s.clone());
            prop_assert_eq!(Tag::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn tag_parser_never_panics(s in "\\PC{0,300}") {
            let _ = Tag::parse(&s);
            let _ = Selector::parse(&s);
        }

        #[test]
        fn exact_selector_matches_its_own_tag(ns in part(), pred in part(), v in value()) {
            let t = Tag::new(&ns, &pred, &v).unwrap();
            let sel = Selector::parse(&t.to_string()).unwrap();
            prop_assert!(sel.matches(std::slice::from_ref(&t)));
            let neg = Selector::parse(&format!("!{t}")).unwrap();
            prop_assert!(!neg.matches(&[t]));
        }

        #[test]
        fn selector_round_trips(ns in part(), pred in part(), v in value(), neg in any::<bool>()) {
            let s = format!("{}{ns}:{pred}={v}", if neg { "!" } else { "" });
            let sel = Selector::parse(&s).unwrap();
            prop_assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        }

        #[test]
        fn star_matches_everything(v in value()) {
            prop_assert!(glob_match("*", &v));
            prop_assert!(glob_match(&v, &v));
        }
    }
}
