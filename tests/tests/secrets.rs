//! The BMC password never shows, both backends: not in any process's
//! command line while consoles are active and viewers connected, not in the
//! environment of console-svc or anything it started, not in an API
//! answer, and not in a single log line at debug level.
//!
//! Needs a distinctive password: scripts/test.sh starts its rig with
//! `RIG_BMC_PASS=Pw-<random>-porthole`. With the rig's default ("password",
//! a word that appears in paths and messages) the test says so and returns.

use anyhow::{ensure, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::procs::{cmdlines_mentioning, environs_mentioning, Proc};
use porthole_tests::session::{self, establish, url_of};
use porthole_tests::{
    both_backends, node_side, rig_or_skip, viewer, Backend, ConsoleSvc, SvcOptions,
};

both_backends!(the_password_is_in_no_argv_environment_answer_or_log);

async fn the_password_is_in_no_argv_environment_answer_or_log(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let password = rig.bmc_password().to_owned();
    if password == "password" || password.len() < 8 {
        eprintln!("notice: the rig's BMC password is not distinctive; start it with RIG_BMC_PASS=Pw-$RANDOM-porthole");
        return Ok(());
    }
    let bmcs = rig.lease_bmcs(2).await?;
    let mut svc = ConsoleSvc::start_with(SvcOptions::new(backend).log("debug")).await?;
    let mut client = svc.client().await?;
    let mut wires = Vec::new();
    for bmc in &bmcs.bmcs {
        let node = session::node_id("secret");
        let on = session::enable(&mut client, bmc.enable_request(&node)).await?;
        let mut v = viewer(&url_of(&on)?).await?;
        let mut n = node_side(bmc).await?;
        establish(&mut v, &mut n).await?;
        wires.push((node, v, n));
    }

    // Sessions are live: ipmitool runs for each console.
    let mut started = svc.processes();
    let sessions = started
        .iter()
        .filter(|p| p.what.contains("sol activate"))
        .count();
    if backend == Backend::Rmcp {
        // SOL runs inside console-svc: no ipmitool process at all.
        ensure!(started.is_empty(), "rmcp started processes: {started:?}");
    } else {
        ensure!(
            sessions >= 2,
            "expected two `sol activate` processes, found {started:?}"
        );
    }
    let argv = cmdlines_mentioning(&password);
    ensure!(
        argv.is_empty(),
        "the password is in these command lines: {argv:?}"
    );
    started.extend(Proc::of(svc.pid()));
    let env = environs_mentioning(&started, &password);
    ensure!(
        env.is_empty(),
        "the password is in these environments: {env:?}"
    );

    let list = client
        .list_consoles(pb::ListConsolesRequest::default())
        .await?
        .into_inner();
    ensure!(list.consoles.len() == 2, "ListConsoles: {list:?}");
    ensure!(
        !format!("{list:?}").contains(&password),
        "ListConsoles echoes the password"
    );

    for (node, _, _) in &wires {
        session::disable(&mut client, node).await?;
    }
    drop(wires);
    svc.stop()?;
    let log = svc.log_lines();
    ensure!(
        log.iter().any(|l| l.contains("DEBUG")),
        "no debug lines were logged: {log:?}"
    );
    let leaks: Vec<&String> = log.iter().filter(|l| l.contains(&password)).collect();
    ensure!(leaks.is_empty(), "the password is in the log: {leaks:?}");
    Ok(())
}
