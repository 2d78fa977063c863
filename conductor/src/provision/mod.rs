//! Ironic's provision state machine: state names, verbs and edges as
//! Ironic's `ironic/common/state_machine.py` defines them, as one table and
//! one function over it. Ironic's rescue, servicing and hold states (and
//! their verbs `rescue`, `unrescue`, `service`, `unhold`, manual `clean`)
//! are not modelled yet; a request for them is refused.
//!
//! ```text
//!  from              event     to               | from              event     to
//!  ----------------  --------  ---------------  | ----------------  --------  ---------------
//!  enroll            manage    verifying        | available         deploy    deploying
//!  verifying         done      manageable       | available         manage    manageable
//!  verifying         fail      enroll           | deploying         wait      wait call-back
//!  manageable        provide   cleaning         | deploying         done      active
//!  manageable        inspect   inspecting       | deploying         fail      deploy failed
//!  manageable        adopt     adopting         | wait call-back    resume    deploying
//!  inspecting        done      manageable       | wait call-back    fail      deploy failed
//!  inspecting        wait      inspect wait     | wait call-back    abort     deploy failed
//!  inspecting        fail      inspect failed   | wait call-back    delete    deleting
//!  inspect wait      done      manageable       | deploy failed     deploy    deploying
//!  inspect wait      resume    inspecting       | deploy failed     rebuild   deploying
//!  inspect wait      fail      inspect failed   | deploy failed     delete    deleting
//!  inspect wait      abort     inspect failed   | active            rebuild   deploying
//!  inspect failed    inspect   inspecting       | active            delete    deleting
//!  inspect failed    manage    manageable       | deleting          clean     cleaning
//!  cleaning          done      available        | deleting          fail      error
//!  cleaning          wait      clean wait       | error             rebuild   deploying
//!  cleaning          fail      clean failed     | error             delete    deleting
//!  cleaning          manage    manageable       | adopting          done      active
//!  clean wait        resume    cleaning         | adopting          fail      adopt failed
//!  clean wait        fail      clean failed     | adopt failed      adopt     adopting
//!  clean wait        abort     clean failed     | adopt failed      manage    manageable
//!  clean failed      manage    manageable       |
//! ```
//!
//! Stable states (`enroll`, `manageable`, `available`, `active`, `error`)
//! have no target; every other state has the stable state it is heading
//! for as `target_provision_state` (Ironic's `add_state(..., target=)`):
//! verifying, inspect* → manageable; cleaning, clean*, deleting →
//! available; deploying, wait call-back, deploy failed, adopt* → active.
//!
//! The API verbs map to events as Ironic's `VERBS`: `active`/`deploy` →
//! deploy, `deleted`/`undeploy` → delete; `manage`, `provide`, `inspect`,
//! `rebuild`, `abort`, `adopt` are their own event. `done`, `fail`, `wait`,
//! `resume` and `clean` (deleting → cleaning) are internal only.
//!
//! Callers: the provision service (`service::provision`) for every change
//! of provision_state; the API for the up-front check of a request.

pub mod deploy_grpc;
pub mod evidence;
pub mod inspect_grpc;
pub mod interfaces;
#[cfg(test)]
mod tests;
pub mod vendor;

use std::fmt;

/// A provision state, spelled as Ironic spells it (see [`State::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Enroll,
    Verifying,
    Manageable,
    Inspecting,
    InspectWait,
    InspectFailed,
    Cleaning,
    CleanWait,
    CleanFailed,
    Available,
    Deploying,
    DeployWait,
    DeployFailed,
    Active,
    Deleting,
    Error,
    Adopting,
    AdoptFailed,
}

/// An event: an API verb or an internal outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    Manage,
    Provide,
    Inspect,
    Deploy,
    Delete,
    Rebuild,
    Abort,
    Adopt,
    Done,
    Fail,
    Wait,
    Resume,
    Clean,
}

use Event as E;
use State as S;

/// Every edge of the machine: `(from, event, to)`. The module doc draws it.
pub const TABLE: &[(State, Event, State)] = &[
    (S::Enroll, E::Manage, S::Verifying),
    (S::Verifying, E::Done, S::Manageable),
    (S::Verifying, E::Fail, S::Enroll),
    (S::Manageable, E::Provide, S::Cleaning),
    (S::Manageable, E::Inspect, S::Inspecting),
    (S::Manageable, E::Adopt, S::Adopting),
    (S::Inspecting, E::Done, S::Manageable),
    (S::Inspecting, E::Wait, S::InspectWait),
    (S::Inspecting, E::Fail, S::InspectFailed),
    (S::InspectWait, E::Done, S::Manageable),
    (S::InspectWait, E::Resume, S::Inspecting),
    (S::InspectWait, E::Fail, S::InspectFailed),
    (S::InspectWait, E::Abort, S::InspectFailed),
    (S::InspectFailed, E::Inspect, S::Inspecting),
    (S::InspectFailed, E::Manage, S::Manageable),
    (S::Cleaning, E::Done, S::Available),
    (S::Cleaning, E::Wait, S::CleanWait),
    (S::Cleaning, E::Fail, S::CleanFailed),
    (S::Cleaning, E::Manage, S::Manageable),
    (S::CleanWait, E::Resume, S::Cleaning),
    (S::CleanWait, E::Fail, S::CleanFailed),
    (S::CleanWait, E::Abort, S::CleanFailed),
    (S::CleanFailed, E::Manage, S::Manageable),
    (S::Available, E::Deploy, S::Deploying),
    (S::Available, E::Manage, S::Manageable),
    (S::Deploying, E::Wait, S::DeployWait),
    (S::Deploying, E::Done, S::Active),
    (S::Deploying, E::Fail, S::DeployFailed),
    (S::DeployWait, E::Resume, S::Deploying),
    (S::DeployWait, E::Fail, S::DeployFailed),
    (S::DeployWait, E::Abort, S::DeployFailed),
    (S::DeployWait, E::Delete, S::Deleting),
    (S::DeployFailed, E::Deploy, S::Deploying),
    (S::DeployFailed, E::Rebuild, S::Deploying),
    (S::DeployFailed, E::Delete, S::Deleting),
    (S::Active, E::Rebuild, S::Deploying),
    (S::Active, E::Delete, S::Deleting),
    (S::Deleting, E::Clean, S::Cleaning),
    (S::Deleting, E::Fail, S::Error),
    (S::Error, E::Rebuild, S::Deploying),
    (S::Error, E::Delete, S::Deleting),
    (S::Adopting, E::Done, S::Active),
    (S::Adopting, E::Fail, S::AdoptFailed),
    (S::AdoptFailed, E::Adopt, S::Adopting),
    (S::AdoptFailed, E::Manage, S::Manageable),
];

/// An event the table has no edge for in the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event \"{}\" is not allowed in provision state \"{}\"", event.as_str(), state.as_str())]
pub struct Refused {
    pub state: State,
    pub event: Event,
}

/// A stored provision state this machine does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown provision state \"{0}\"")]
pub struct UnknownState(pub String);

/// The one transition function: `(state, event)` → `(next, target)`, the
/// target being what `target_provision_state` becomes (`None` in a stable
/// state).
pub fn transition(state: State, event: Event) -> Result<(State, Option<State>), Refused> {
    TABLE
        .iter()
        .find(|(from, ev, _)| *from == state && *ev == event)
        .map(|&(_, _, to)| (to, to.target()))
        .ok_or(Refused { state, event })
}

pub const ALL_STATES: &[State] = &[
    S::Enroll,
    S::Verifying,
    S::Manageable,
    S::Inspecting,
    S::InspectWait,
    S::InspectFailed,
    S::Cleaning,
    S::CleanWait,
    S::CleanFailed,
    S::Available,
    S::Deploying,
    S::DeployWait,
    S::DeployFailed,
    S::Active,
    S::Deleting,
    S::Error,
    S::Adopting,
    S::AdoptFailed,
];

pub const ALL_EVENTS: &[Event] = &[
    E::Manage,
    E::Provide,
    E::Inspect,
    E::Deploy,
    E::Delete,
    E::Rebuild,
    E::Abort,
    E::Adopt,
    E::Done,
    E::Fail,
    E::Wait,
    E::Resume,
    E::Clean,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            S::Enroll => "enroll",
            S::Verifying => "verifying",
            S::Manageable => "manageable",
            S::Inspecting => "inspecting",
            S::InspectWait => "inspect wait",
            S::InspectFailed => "inspect failed",
            S::Cleaning => "cleaning",
            S::CleanWait => "clean wait",
            S::CleanFailed => "clean failed",
            S::Available => "available",
            S::Deploying => "deploying",
            S::DeployWait => "wait call-back",
            S::DeployFailed => "deploy failed",
            S::Active => "active",
            S::Deleting => "deleting",
            S::Error => "error",
            S::Adopting => "adopting",
            S::AdoptFailed => "adopt failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownState> {
        ALL_STATES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }

    /// Stable: nothing happens until someone asks (Ironic's STABLE_STATES).
    pub fn is_stable(self) -> bool {
        self.target().is_none()
    }

    /// The stable state this one is heading for (None when stable).
    pub fn target(self) -> Option<State> {
        match self {
            S::Enroll | S::Manageable | S::Available | S::Active | S::Error => None,
            S::Verifying | S::Inspecting | S::InspectWait | S::InspectFailed => Some(S::Manageable),
            S::Cleaning | S::CleanWait | S::CleanFailed | S::Deleting => Some(S::Available),
            S::Deploying | S::DeployWait | S::DeployFailed | S::Adopting | S::AdoptFailed => {
                Some(S::Active)
            }
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            E::Manage => "manage",
            E::Provide => "provide",
            E::Inspect => "inspect",
            E::Deploy => "deploy",
            E::Delete => "delete",
            E::Rebuild => "rebuild",
            E::Abort => "abort",
            E::Adopt => "adopt",
            E::Done => "done",
            E::Fail => "fail",
            E::Wait => "wait",
            E::Resume => "resume",
            E::Clean => "clean",
        }
    }

    /// Is this an event a client may ask for?
    pub fn is_verb(self) -> bool {
        !matches!(self, E::Done | E::Fail | E::Wait | E::Resume | E::Clean)
    }
}

/// What a `PUT .../states/provision` `target` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// A verb this machine carries out.
    Event(Event),
    /// An Ironic verb not modelled here (rescue, servicing, manual clean).
    Unsupported,
    /// Not an Ironic verb at all.
    Unknown,
}

/// Ironic's API targets (`states.VERBS`) as events.
pub fn parse_verb(target: &str) -> Verb {
    match target {
        "active" | "deploy" => Verb::Event(E::Deploy),
        "deleted" | "undeploy" => Verb::Event(E::Delete),
        "manage" => Verb::Event(E::Manage),
        "provide" => Verb::Event(E::Provide),
        "inspect" => Verb::Event(E::Inspect),
        "rebuild" => Verb::Event(E::Rebuild),
        "abort" => Verb::Event(E::Abort),
        "adopt" => Verb::Event(E::Adopt),
        "clean" | "rescue" | "unrescue" | "unhold" | "service" => Verb::Unsupported,
        _ => Verb::Unknown,
    }
}

/// The lowest API microversion that may ask for `target` (Ironic's
/// `MIN_VERB_VERSIONS`); older requests are 406.
pub fn min_minor(target: &str) -> u32 {
    match target {
        "manage" | "provide" => 4,
        "inspect" => 6,
        "abort" => 13,
        "adopt" => 17,
        "deploy" | "undeploy" => 73,
        _ => 1,
    }
}
