//! The operator edge against a real controller (no listener): what a peer
//! sends that this controller cannot take is refused there, by name.

use cutover_proto::v1;
use cutover_proto::Operator;
use tonic::{Code, Request};

use super::operator::OperatorApi;
use crate::testing::controller;

async fn control(action: i32, rollback: bool) -> tonic::Status {
    let dir = tempfile::tempdir().unwrap();
    let api = OperatorApi::new(controller(dir.path()));
    api.control_rollout(Request::new(v1::ControlRolloutRequest {
        id: 1,
        action,
        rollback,
        allow_offline: false,
    }))
    .await
    .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_action_this_controller_does_not_know_is_refused_naming_it() {
    for rollback in [false, true] {
        let status = control(42, rollback).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("unknown rollout action 42")
                && status.message().contains("use pause, resume or abort"),
            "{status:?}"
        );
    }
    // An older CLI's string action arrives as no action at all.
    let status = control(0, false).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("no rollout action given"),
        "{status:?}"
    );
    // A known one is read as itself.
    let status = control(v1::RolloutAction::Pause.into(), true).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("--rollback goes with abort only, not \"pause\""),
        "{status:?}"
    );
}
