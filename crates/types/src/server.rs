//! Servers and server arrays, and the server lifecycle.
//!
//! ```text
//!                 launch ok          agent: boot done
//!   pending ───────────────▶ booting ───────────────▶ operational
//!      │                       │  boot script failed /       │
//!      │ launch failed         │  no agent before deadline   │ terminate
//!      ▼                       ▼                             ▼
//!   stranded ◀─────────────────┘                      decommissioning ──▶ terminated
//!      │                                                     ▲
//!      └──────────────────── terminate ──────────────────────┘
//! ```
//!
//! An operational server whose instance dies or disappears becomes `stranded` too.
//! `stranded` always carries a [`StrandedReason`]: the step that failed, its exit code and the
//! tail of its output, so a user sees why without logging in. Any state may go straight to
//! `terminated` when the instance disappears under us (terminated outside Stratus).

use chrono::{DateTime, Utc};
use std::net::IpAddr;

use crate::input::Inputs;
use crate::size::SizeRequest;
use crate::tag::Tag;
use crate::{ArrayId, FieldError, Invalid, Name, ServerId};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Pending,
    Booting,
    Operational,
    Decommissioning,
    Terminated,
    Stranded,
}

impl ServerState {
    pub const ALL: [ServerState; 6] = [
        Self::Pending,
        Self::Booting,
        Self::Operational,
        Self::Decommissioning,
        Self::Terminated,
        Self::Stranded,
    ];

    /// The lifecycle's edges (see the module docs).
    pub fn can_move_to(self, to: ServerState) -> bool {
        use ServerState::*;
        matches!(
            (self, to),
            (Pending, Booting | Stranded | Decommissioning)
                | (Booting, Operational | Stranded | Decommissioning)
                | (Operational, Booting | Stranded | Decommissioning)
                | (Stranded, Decommissioning)
                | (Pending | Booting | Operational | Stranded | Decommissioning, Terminated)
        )
    }

    /// Still holds (or is getting) an instance.
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Terminated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Booting => "booting",
            Self::Operational => "operational",
            Self::Decommissioning => "decommissioning",
            Self::Terminated => "terminated",
            Self::Stranded => "stranded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a server is stranded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StrandedReason {
    /// What failed: `launch`, `enrolment`, or `boot script NAME`.
    pub step: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last lines of the failing script's output (credentials masked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
}

/// What a user gives to launch a server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Unique within the deployment; becomes the hostname.
    pub name: Name,
    pub deployment: Name,
    pub template: Name,
    /// Defaults to the deployment's cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Name>,
    /// Defaults to the cloud's first region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Overrides the template's and image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeRequest>,
    /// Override deployment and template inputs for this server.
    #[serde(default)]
    pub inputs: Inputs,
    /// Added to the template's default tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl ServerSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if let Some(s) = &self.size {
            errs.check("", s.validate());
        }
        if self.tags.len() > crate::template::TAGS_MAX {
            errs.push(FieldError::new("tags", "too many tags"));
        }
        if let Some(r) = &self.region
            && (r.is_empty() || r.len() > 64)
        {
            errs.push(FieldError::new("region", "must be 1-64 characters"));
        }
        errs.into_result()
    }
}

/// A server: what was asked, what it resolved to, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Server {
    pub id: ServerId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub name: Name,
    pub deployment: Name,
    pub template: Name,
    /// The template version and content hash it was launched from.
    pub template_version: u32,
    pub template_hash: String,
    pub cloud: Name,
    pub region: String,
    /// The cloud's size name it resolved to.
    pub size: String,
    pub image: Name,
    pub image_version: u32,
    pub native_image: String,
    pub login_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<Name>,
    pub inputs: Inputs,
    pub tags: Vec<Tag>,
    pub state: ServerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stranded: Option<StrandedReason>,
    /// The cloud's id of the instance, once launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub private_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub public_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<DateTime<Utc>>,
    /// When the current boot began: the launch, or the reboot that made it boot again. The
    /// boot deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booting_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operational_at: Option<DateTime<Utc>>,
    /// When the termination began (decommission scripts, then draining from load balancers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommissioning_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<DateTime<Utc>>,
    /// A rebundle of this server (`stratus server rebundle`), while it goes and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebundle: Option<Rebundle>,
}

/// What happens to a rebundled server once its image is captured: its identity is gone, so it
/// cannot simply carry on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AfterRebundle {
    /// It is terminated (an array member is then replaced by its array, from the new image).
    #[default]
    Terminate,
    /// It is terminated and a new server of the same name, template, inputs and tags is
    /// launched in its place (from the image it had; an array member from its array's).
    Relaunch,
}

/// Where a rebundle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebundleStep {
    /// The agent was asked to prepare the instance; the server still serves.
    Preparing,
    /// The agent refused (a secret in the file system, a run going): nothing changed.
    Refused,
    /// Prepared: the server leaves its load balancers, its instance is stopped and captured.
    Prepared,
    /// The image version exists and is the array's next-launch image.
    Captured,
    /// The capture failed after the preparation; the server is terminated all the same.
    Failed,
}

/// A server's rebundle: the request and how it went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rebundle {
    /// The array whose next launches use the image.
    pub array: Name,
    /// The multi-cloud image that gets the new version.
    pub image: Name,
    pub then: AfterRebundle,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub step: RebundleStep,
    /// What the preparation removed, one line per kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Files holding a secret value (a refusal's reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_found_in: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<DateTime<Utc>>,
    /// The image version made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl Rebundle {
    /// Still under way (a second rebundle of the server is refused meanwhile).
    pub fn in_progress(&self) -> bool {
        matches!(self.step, RebundleStep::Preparing | RebundleStep::Prepared)
    }
}

/// Why a state change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server {server} is {from}; it cannot become {to}")]
pub struct BadTransition {
    pub server: String,
    pub from: ServerState,
    pub to: ServerState,
}

impl Server {
    /// The instance's hostname: the server's name as a DNS label (`_` and `.` become `-`;
    /// names are at most 63 characters, start with a letter and end with a letter or digit).
    pub fn hostname(&self) -> String {
        self.name.as_str().replace(['_', '.'], "-")
    }

    /// Move along the lifecycle, stamping the times the model keeps.
    pub fn move_to(&mut self, to: ServerState, now: DateTime<Utc>) -> Result<(), BadTransition> {
        if !self.state.can_move_to(to) {
            return Err(BadTransition {
                server: self.name.to_string(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        match to {
            ServerState::Booting => {
                self.launched_at.get_or_insert(now);
                self.booting_since = Some(now);
            }
            ServerState::Operational => {
                self.operational_at = Some(now);
                self.stranded = None;
            }
            ServerState::Decommissioning => self.decommissioning_since = Some(now),
            ServerState::Terminated => self.terminated_at = Some(now),
            _ => {}
        }
        self.updated_at = now;
        Ok(())
    }

    pub fn strand(&mut self, reason: StrandedReason, now: DateTime<Utc>) -> Result<(), BadTransition> {
        self.move_to(ServerState::Stranded, now)?;
        self.stranded = Some(reason);
        Ok(())
    }
}

/// What a user gives to create a server array.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArraySpec {
    pub name: Name,
    pub deployment: Name,
    pub template: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeRequest>,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    #[serde(default)]
    pub inputs: Inputs,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Grow and shrink by the members' votes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Which members go first when the array shrinks.
    #[serde(default, skip_serializing_if = "ScaleIn::is_default")]
    pub scale_in: ScaleIn,
}

/// Which members an array decommissions first when it shrinks. Members that are not serving
/// (booting, stranded) always go before operational ones; among the rest, this decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleIn {
    /// The longest-running first (they are the furthest from the current template and image).
    #[default]
    Oldest,
    /// The most recent first (keeps the proven members; undoes a scale-up).
    Newest,
}

impl ScaleIn {
    pub fn is_default(&self) -> bool {
        *self == Self::Oldest
    }

    /// Order members so that those to go first come first.
    pub fn order(self, members: &mut [Server]) {
        members.sort_by(|x, y| {
            let serving = (x.state == ServerState::Operational).cmp(&(y.state == ServerState::Operational));
            let age = match self {
                Self::Oldest => x.created_at.cmp(&y.created_at),
                Self::Newest => y.created_at.cmp(&x.created_at),
            };
            serving.then(age).then_with(|| x.name.cmp(&y.name))
        });
    }
}

/// Autoscaling by voting tags, as RightScale did it: each operational member may vote with the
/// tag `array:vote=grow` or `array:vote=shrink` (set by its own scripts through
/// `stratus-agent tag add`, or by anyone through the API). When the share of members voting one
/// way reaches `threshold_percent`, the array's desired count moves by `grow_by` / `shrink_by`,
/// within min..max, and then waits `calm_secs` before it acts again. Growing wins a tie. Votes
/// count only while the array has settled (as many members as desired, all operational): an
/// array still launching or stranded does not move again on the votes of part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    #[serde(default = "half")]
    pub threshold_percent: u8,
    #[serde(default = "five_minutes")]
    pub calm_secs: u32,
    #[serde(default = "one")]
    pub grow_by: u32,
    #[serde(default = "one")]
    pub shrink_by: u32,
}

fn half() -> u8 {
    51
}
fn five_minutes() -> u32 {
    300
}
fn one() -> u32 {
    1
}

/// The tag a member votes with.
pub const VOTE_PREDICATE: (&str, &str) = ("array", "vote");

impl Autoscale {
    /// The desired count the votes ask for, if any: `grow` and `shrink` votes among `members`
    /// operational members.
    pub fn decide(&self, desired: u32, min: u32, max: u32, members: usize, grow: usize, shrink: usize) -> Option<u32> {
        if members == 0 {
            return None;
        }
        let reached = |votes: usize| votes * 100 >= members * usize::from(self.threshold_percent);
        let next = if reached(grow) && grow > 0 {
            desired.saturating_add(self.grow_by).min(max)
        } else if reached(shrink) && shrink > 0 {
            desired.saturating_sub(self.shrink_by).max(min)
        } else {
            return None;
        };
        (next != desired).then_some(next)
    }
}

pub const ARRAY_MAX: u32 = 1000;

impl ArraySpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.max > ARRAY_MAX {
            errs.push(FieldError::new(
                "max",
                format!("{} is over the limit of {ARRAY_MAX}", self.max),
            ));
        }
        if let Some(a) = &self.autoscale {
            if !(1..=100).contains(&a.threshold_percent) {
                errs.push(FieldError::new("autoscale.threshold_percent", "must be 1-100"));
            }
            if a.grow_by == 0 || a.shrink_by == 0 {
                errs.push(FieldError::new("autoscale", "grow_by and shrink_by must be at least 1"));
            }
            if a.calm_secs > 86_400 {
                errs.push(FieldError::new("autoscale.calm_secs", "must be at most 86400"));
            }
        }
        if self.min > self.max {
            errs.push(FieldError::new(
                "min",
                format!("min ({}) is above max ({})", self.min, self.max),
            ));
        }
        if self.desired < self.min || self.desired > self.max {
            errs.push(FieldError::new(
                "desired",
                format!("{} is outside min..max ({}..{})", self.desired, self.min, self.max),
            ));
        }
        if let Some(s) = &self.size {
            errs.check("", s.validate());
        }
        // Members are named `<array>-<n>`; leave room for the suffix.
        if self.name.as_str().len() > 56 {
            errs.push(FieldError::new(
                "name",
                "an array name has at most 56 characters (members add a suffix)",
            ));
        }
        errs.into_result()
    }
}

/// The image version a new member of an array boots from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ImageRef {
    pub image: Name,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ServerArray {
    pub id: ArrayId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: ArraySpec,
    /// When set, new members launch from this image version instead of the template's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_launch_image: Option<ImageRef>,
    /// When autoscaling last changed the desired count (the calm time counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaled_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_decide_within_bounds() {
        let a = Autoscale {
            threshold_percent: 50,
            calm_secs: 0,
            grow_by: 2,
            shrink_by: 1,
        };
        assert_eq!(a.decide(3, 1, 10, 4, 2, 0), Some(5), "half grow votes reach 50 %");
        assert_eq!(a.decide(3, 1, 10, 4, 1, 0), None, "a quarter does not");
        assert_eq!(a.decide(9, 1, 10, 4, 4, 0), Some(10), "never above max");
        assert_eq!(a.decide(10, 1, 10, 4, 4, 0), None, "at max: nothing to do");
        assert_eq!(a.decide(3, 1, 10, 4, 0, 2), Some(2));
        assert_eq!(a.decide(1, 1, 10, 4, 0, 4), None, "at min: nothing to do");
        assert_eq!(a.decide(3, 1, 10, 4, 2, 2), Some(5), "a tie grows");
        assert_eq!(a.decide(3, 1, 10, 0, 0, 0), None, "no members, no votes");
    }
    use ServerState::*;
    use proptest::prelude::*;

    #[test]
    fn lifecycle_edges() {
        assert!(Pending.can_move_to(Booting));
        assert!(Booting.can_move_to(Operational));
        assert!(
            Operational.can_move_to(Stranded),
            "an operational server whose instance died"
        );
        assert!(Booting.can_move_to(Stranded));
        assert!(Operational.can_move_to(Decommissioning));
        assert!(Decommissioning.can_move_to(Terminated));
        assert!(!Terminated.can_move_to(Pending));
        assert!(
            !Stranded.can_move_to(Operational),
            "a stranded server is replaced, not revived"
        );
        assert!(!Operational.can_move_to(Pending));
    }

    proptest! {
        #[test]
        fn terminated_is_final_and_reachable(i in 0usize..6, j in 0usize..6) {
            let (a, b) = (ServerState::ALL[i], ServerState::ALL[j]);
            prop_assert!(!Terminated.can_move_to(b));
            if a != Terminated { prop_assert!(a.can_move_to(Terminated)); }
            prop_assert!(!a.can_move_to(a), "no self-loops");
        }
    }

    fn member(name: &str, state: ServerState, minutes_ago: i64) -> Server {
        let at = Utc::now() - chrono::TimeDelta::minutes(minutes_ago);
        serde_json::from_value(serde_json::json!({
            "id": ServerId::new(), "revision": 1, "name": name, "deployment": "d",
            "template": "t", "cloud": "c", "region": "r", "image": "i", "image_version": 1,
            "native_image": "n", "size": "s", "template_version": 1, "template_hash": "h",
            "state": state, "inputs": {}, "tags": [], "login_user": "root",
            "created_at": at, "updated_at": at,
        }))
        .expect("a server")
    }

    #[test]
    fn scale_in_takes_members_that_do_not_serve_first_then_by_age() {
        let mut m = vec![
            member("old", Operational, 30),
            member("new", Operational, 1),
            member("stuck", Stranded, 5),
            member("mid", Operational, 10),
            member("booting", Booting, 0),
        ];
        let names = |m: &[Server]| m.iter().map(|s| s.name.to_string()).collect::<Vec<_>>();
        ScaleIn::Oldest.order(&mut m);
        assert_eq!(names(&m), ["stuck", "booting", "old", "mid", "new"]);
        ScaleIn::Newest.order(&mut m);
        assert_eq!(names(&m), ["booting", "stuck", "new", "mid", "old"]);
        let spec: ArraySpec = toml::from_str(
            "name = \"a\"\ndeployment = \"d\"\ntemplate = \"t\"\nmax = 3\ndesired = 1\nscale_in = \"newest\"",
        )
        .expect("parses");
        assert_eq!(spec.scale_in, ScaleIn::Newest);
        assert!(
            toml::from_str::<ArraySpec>(
                "name = \"a\"\ndeployment = \"d\"\ntemplate = \"t\"\nmax = 3\ndesired = 1\nscale_in = \"random\""
            )
            .is_err()
        );
    }

    #[test]
    fn array_bounds() {
        let mut a: ArraySpec =
            toml::from_str("name = \"app\"\ndeployment = \"d\"\ntemplate = \"t\"\nmin = 1\nmax = 3\ndesired = 2")
                .unwrap();
        a.validate().unwrap();
        a.desired = 4;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("desired: 4 is outside min..max (1..3)")
        );
        a.min = 5;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("min (5) is above max (3)")
        );
    }
}
