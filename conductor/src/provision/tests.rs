//! The state machine against Ironic's table, written out by hand here (not
//! read from [`TABLE`]), so a wrong, missing or extra edge fails a test.

use super::*;

/// One `#[test]` per edge of Ironic's machine (as far as it is modelled):
/// the transition goes where Ironic goes, with Ironic's target.
macro_rules! edges {
    ($($name:ident: $from:ident --$ev:ident--> $to:ident, $target:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_eq!(
                    transition(State::$from, Event::$ev),
                    Ok((State::$to, $target)),
                );
            }
        )*
        /// Every hand-written edge, for the completeness checks.
        const IRONIC: &[(State, Event, State)] = &[$((State::$from, Event::$ev, State::$to)),*];
    };
}

const MANAGEABLE: Option<State> = Some(State::Manageable);
const AVAILABLE: Option<State> = Some(State::Available);
const ACTIVE: Option<State> = Some(State::Active);

edges! {
    enroll_manage: Enroll --Manage--> Verifying, MANAGEABLE;
    verifying_done: Verifying --Done--> Manageable, None;
    verifying_fail: Verifying --Fail--> Enroll, None;
    manageable_provide: Manageable --Provide--> Cleaning, AVAILABLE;
    manageable_inspect: Manageable --Inspect--> Inspecting, MANAGEABLE;
    manageable_adopt: Manageable --Adopt--> Adopting, ACTIVE;
    inspecting_done: Inspecting --Done--> Manageable, None;
    inspecting_wait: Inspecting --Wait--> InspectWait, MANAGEABLE;
    inspecting_fail: Inspecting --Fail--> InspectFailed, MANAGEABLE;
    inspect_wait_done: InspectWait --Done--> Manageable, None;
    inspect_wait_resume: InspectWait --Resume--> Inspecting, MANAGEABLE;
    inspect_wait_fail: InspectWait --Fail--> InspectFailed, MANAGEABLE;
    inspect_wait_abort: InspectWait --Abort--> InspectFailed, MANAGEABLE;
    inspect_failed_inspect: InspectFailed --Inspect--> Inspecting, MANAGEABLE;
    inspect_failed_manage: InspectFailed --Manage--> Manageable, None;
    cleaning_done: Cleaning --Done--> Available, None;
    cleaning_wait: Cleaning --Wait--> CleanWait, AVAILABLE;
    cleaning_fail: Cleaning --Fail--> CleanFailed, AVAILABLE;
    cleaning_manage: Cleaning --Manage--> Manageable, None;
    clean_wait_resume: CleanWait --Resume--> Cleaning, AVAILABLE;
    clean_wait_fail: CleanWait --Fail--> CleanFailed, AVAILABLE;
    clean_wait_abort: CleanWait --Abort--> CleanFailed, AVAILABLE;
    clean_failed_manage: CleanFailed --Manage--> Manageable, None;
    available_deploy: Available --Deploy--> Deploying, ACTIVE;
    available_manage: Available --Manage--> Manageable, None;
    deploying_wait: Deploying --Wait--> DeployWait, ACTIVE;
    deploying_done: Deploying --Done--> Active, None;
    deploying_fail: Deploying --Fail--> DeployFailed, ACTIVE;
    deploy_wait_resume: DeployWait --Resume--> Deploying, ACTIVE;
    deploy_wait_fail: DeployWait --Fail--> DeployFailed, ACTIVE;
    deploy_wait_abort: DeployWait --Abort--> DeployFailed, ACTIVE;
    deploy_wait_delete: DeployWait --Delete--> Deleting, AVAILABLE;
    deploy_failed_deploy: DeployFailed --Deploy--> Deploying, ACTIVE;
    deploy_failed_rebuild: DeployFailed --Rebuild--> Deploying, ACTIVE;
    deploy_failed_delete: DeployFailed --Delete--> Deleting, AVAILABLE;
    active_rebuild: Active --Rebuild--> Deploying, ACTIVE;
    active_delete: Active --Delete--> Deleting, AVAILABLE;
    deleting_clean: Deleting --Clean--> Cleaning, AVAILABLE;
    deleting_fail: Deleting --Fail--> Error, None;
    error_rebuild: Error --Rebuild--> Deploying, ACTIVE;
    error_delete: Error --Delete--> Deleting, AVAILABLE;
    adopting_done: Adopting --Done--> Active, None;
    adopting_fail: Adopting --Fail--> AdoptFailed, ACTIVE;
    adopt_failed_adopt: AdoptFailed --Adopt--> Adopting, ACTIVE;
    adopt_failed_manage: AdoptFailed --Manage--> Manageable, None;
}

#[test]
fn the_table_has_exactly_ironics_edges() {
    for edge in TABLE {
        assert!(
            IRONIC.contains(edge),
            "edge not in Ironic's table: {edge:?}"
        );
    }
    for edge in IRONIC {
        assert!(TABLE.contains(edge), "Ironic's edge missing: {edge:?}");
    }
    assert_eq!(TABLE.len(), IRONIC.len(), "an edge twice in TABLE");
}

/// Every (state, event) pair without an Ironic edge is refused, and says so.
#[test]
fn every_other_pair_is_refused() {
    let mut refused = 0;
    for &state in ALL_STATES {
        for &event in ALL_EVENTS {
            if IRONIC.iter().any(|(f, e, _)| *f == state && *e == event) {
                continue;
            }
            assert_eq!(
                transition(state, event),
                Err(Refused { state, event }),
                "{state} + {}",
                event.as_str()
            );
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        ALL_STATES.len() * ALL_EVENTS.len() - IRONIC.len(),
        "pairs counted"
    );
}

/// Refused verbs a user meets, by hand, from the CLI's point of view.
#[test]
fn refused_verbs_spot_checks() {
    let no = |s: State, e: Event| assert!(transition(s, e).is_err(), "{s} + {}", e.as_str());
    no(State::Enroll, Event::Provide); // must manage first
    no(State::Enroll, Event::Deploy);
    no(State::Enroll, Event::Inspect);
    no(State::Enroll, Event::Adopt);
    no(State::Manageable, Event::Manage); // already there
    no(State::Manageable, Event::Deploy); // provide first
    no(State::Manageable, Event::Delete);
    no(State::Available, Event::Provide);
    no(State::Available, Event::Inspect); // Ironic: manage first
    no(State::Available, Event::Delete);
    no(State::Available, Event::Rebuild);
    no(State::Active, Event::Deploy); // rebuild, not deploy
    no(State::Active, Event::Manage);
    no(State::Active, Event::Abort);
    no(State::Deploying, Event::Abort); // only wait states abort
    no(State::Deploying, Event::Delete);
    no(State::Cleaning, Event::Abort);
    no(State::Inspecting, Event::Abort);
    no(State::Verifying, Event::Abort);
    no(State::Verifying, Event::Manage);
    no(State::Error, Event::Manage);
    no(State::Error, Event::Provide);
    no(State::Deleting, Event::Delete);
    no(State::CleanFailed, Event::Provide); // manage, then provide
    no(State::InspectFailed, Event::Provide);
    no(State::AdoptFailed, Event::Delete);
}

#[test]
fn names_are_ironics_and_round_trip() {
    let names: Vec<&str> = ALL_STATES.iter().map(|s| s.as_str()).collect();
    for want in [
        "enroll",
        "verifying",
        "manageable",
        "inspecting",
        "inspect wait",
        "inspect failed",
        "cleaning",
        "clean wait",
        "clean failed",
        "available",
        "deploying",
        "wait call-back",
        "deploy failed",
        "active",
        "deleting",
        "error",
        "adopting",
        "adopt failed",
    ] {
        assert!(names.contains(&want), "{want}");
        assert_eq!(State::parse(want).unwrap().as_str(), want);
    }
    assert_eq!(names.len(), 18);
    assert!(State::parse("deploy wait").is_err());
    assert!(State::parse("Active").is_err());
}

#[test]
fn stable_states_are_ironics() {
    let stable: Vec<State> = ALL_STATES
        .iter()
        .copied()
        .filter(|s| s.is_stable())
        .collect();
    assert_eq!(
        stable,
        [
            State::Enroll,
            State::Manageable,
            State::Available,
            State::Active,
            State::Error
        ]
    );
}

#[test]
fn verbs_map_as_ironics_verbs() {
    for (target, ev) in [
        ("active", Event::Deploy),
        ("deploy", Event::Deploy),
        ("deleted", Event::Delete),
        ("undeploy", Event::Delete),
        ("manage", Event::Manage),
        ("provide", Event::Provide),
        ("inspect", Event::Inspect),
        ("rebuild", Event::Rebuild),
        ("abort", Event::Abort),
        ("adopt", Event::Adopt),
    ] {
        assert_eq!(parse_verb(target), Verb::Event(ev), "{target}");
        assert!(ev.is_verb());
    }
    for internal in ["done", "fail", "wait", "resume", "delete", "available", ""] {
        assert_eq!(parse_verb(internal), Verb::Unknown, "{internal}");
    }
    assert_eq!(parse_verb("rescue"), Verb::Unsupported);
    assert_eq!(parse_verb("clean"), Verb::Unsupported);
    assert_eq!(min_minor("adopt"), 17);
    assert_eq!(min_minor("undeploy"), 73);
    assert_eq!(min_minor("active"), 1);
}
