//! An instance the booter cannot boot, or whose user data fails, is ended in moto with an EC2
//! StateReason naming the cause, so DescribeInstances tells a waiting caller why at once.

mod common;

use common::Aws;
use flotilla_emulator::control::{ControlError, StateReason};

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
