//! An instance the booter cannot boot, or whose user data fails, is ended in moto with an EC2
//! StateReason naming the cause, so DescribeInstances tells a waiting caller why at once.

mod common;

use std::net::{SocketAddrV4, TcpListener};
use std::time::Duration;

use common::{Aws, base64, eventually};
use flotilla_emulator::control::{
    BOOT_FAILURE_CODE, BootState, ControlError, StateReason, StateTiming,
};

/// Far less than any caller's deadline: a poll (250 ms), a boot attempt and one control call.
const REPORTED_WITHIN: Duration = Duration::from_secs(10);
/// Long enough to take a port on the address before the instance runs.
const PENDING: Duration = Duration::from_millis(1500);
/// Stays, as an exec'd agent would.
const STAYS: &str = "#!/bin/sh\nexec sleep 600\n";

/// Waits for the instance to be terminated with a StateReason; returns it.
async fn terminated_with_reason(aws: &Aws, id: &str) -> StateReason {
    eventually(&format!("{id} terminated with a StateReason"), REPORTED_WITHIN, || async {
        let (state, _) = aws.state(id).await;
        if state != "terminated" {
            return None;
        }
        aws.state_reason(id).await
    })
    .await
}

#[tokio::test]
async fn a_port_taken_after_the_address_was_handed_out_ends_the_instance_with_the_cause() {
    let aws = Aws::new("taken-later");
    let timing = StateTiming { pending: PENDING, shutting_down: Duration::ZERO };
    aws.scope.set_timing(timing).await.unwrap();
    let ids = aws.launch(2, &[("UserData", &base64(STAYS))]).await;
    let pool = aws.emulator.public_ips().await.unwrap();
    // While they are pending, another program takes the agent's port on the first one's
    // address and the IMDS port on the second one's.
    let held: Vec<(&String, SocketAddrV4, TcpListener)> = ids
        .iter()
        .zip([7443, 1338])
        .map(|(id, port)| {
            let (ip, _) = pool.in_use.iter().find(|(_, holder)| *holder == id).expect("an address");
            let address = SocketAddrV4::new(*ip, port);
            let listener = TcpListener::bind(address)
                .unwrap_or_else(|error| panic!("binding {address} from the test: {error}"));
            (id, address, listener)
        })
        .collect();

    for (id, address, _) in &held {
        let reason = terminated_with_reason(&aws, id).await;
        let cause = format!("cannot boot: address {address} is in use");
        assert_eq!(
            reason,
            StateReason {
                code: "Server.InternalError".to_owned(),
                message: format!("Server.InternalError: flotilla-emulator: {cause}"),
            }
        );
        let booted = aws.emulator.wait_booted(id, REPORTED_WITHIN, |_| true).await.unwrap();
        assert_eq!(booted.state, BootState::Failed);
        assert_eq!(
            booted.error.as_deref(),
            Some(cause.as_str()),
            "the booter's report says it too"
        );
    }
}

#[tokio::test]
async fn user_data_that_exits_1_ends_the_instance_with_its_status_and_last_output() {
    let aws = Aws::new("exits-1");
    aws.instant_states().await;
    let script =
        "#!/bin/sh\necho starting\necho 'bootstrap: giving up on: download_agent' >&2\nexit 1\n";
    let id = aws.launch(1, &[("UserData", &base64(script))]).await.remove(0);
    let reason = terminated_with_reason(&aws, &id).await;
    let cause =
        "user data exited with status 1; its last output: bootstrap: giving up on: download_agent";
    assert_eq!(reason.code, BOOT_FAILURE_CODE);
    assert_eq!(reason.message, format!("Server.InternalError: flotilla-emulator: {cause}"));
    let booted = aws
        .emulator
        .wait_booted(&id, REPORTED_WITHIN, |b| b.state == BootState::Stopped)
        .await
        .unwrap();
    assert_eq!(booted.exit_code, Some(1));
    assert_eq!(booted.error.as_deref(), Some(cause));
}

#[tokio::test]
async fn user_data_that_exits_0_leaves_the_instance_running() {
    let aws = Aws::new("exits-0");
    aws.instant_states().await;
    let id = aws.launch(1, &[("UserData", &base64("#!/bin/sh\nexit 0\n"))]).await.remove(0);
    let booted = aws
        .emulator
        .wait_booted(&id, REPORTED_WITHIN, |b| b.state == BootState::Exited)
        .await
        .unwrap();
    // The booter decides to report in the same step that records the exit: without an error
    // there, there is no report to wait for.
    assert_eq!((booted.exit_code, booted.error), (Some(0), None));
    assert_eq!(aws.state(&id).await.0, "running");
    assert_eq!(aws.state_reason(&id).await, None);
    aws.terminate(&[id]).await;
}

#[tokio::test]
async fn the_control_api_ends_an_instance_once_with_the_reason_given() {
    let aws = Aws::new("end-with-reason");
    aws.instant_states().await;
    let id = aws.launch(1, &[]).await.remove(0);
    let spot = StateReason::new("Server.SpotInstanceTermination", "Spot instance termination");
    let ended = aws.emulator.terminate_instance(&id, &spot).await.unwrap();
    assert_eq!((ended.state.as_str(), ended.state_reason.as_ref()), ("terminated", Some(&spot)));
    assert_eq!(aws.state_reason(&id).await.as_ref(), Some(&spot));
    // An instance already down keeps its state and reason.
    let later = StateReason::boot_failure("cannot boot: too late");
    let again = aws.emulator.terminate_instance(&id, &later).await.unwrap();
    assert_eq!(again.state_reason, Some(spot));
    match aws.emulator.terminate_instance("i-0000000000000dead", &later).await {
        Err(ControlError::Status { status: 404, .. }) => {}
        other => panic!("an unknown instance is 404: {other:?}"),
    }
}
