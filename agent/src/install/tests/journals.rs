//! Journals that cannot be read or are gone, and what the agent then
//! keeps, reports and refuses.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_journal_keeps_every_release_and_its_service_is_refused_untouched() {
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let [v1, v2, v3, v4] = ["1", "2", "3", "4"].map(|v| artifact(&h.world, v));
    h.run(install("c1", "1", v1)).await;
    h.run(install("c2", "2", v2)).await;
    h.run(install_of("web", "w3", "3", v3)).await;
    let broken = Journal::path(&dir, "web");
    std::fs::write(&broken, b"{\"service\": \"web\", trunc").unwrap();
    // api moves on; v1 is no longer needed by any journal that can be read.
    let r = h.run(install("c4", "4", v4)).await;
    assert!(r.ok, "{r:?}");
    let all: Vec<String> = {
        let mut v = [v1, v2, v3, v4].map(|a| a.0.to_hex()).to_vec();
        v.sort();
        v
    };
    assert_eq!(h.releases(), all, "a release was deleted");

    // A command for the broken service: refused, naming the file and fix.
    h.calls();
    let r = h.run(install_of("web", "w1", "1", v1)).await;
    let e = r.evidence.as_ref().expect("evidence");
    assert!(!r.ok && e.gate == "journal", "{r:?}");
    assert!(
        e.detail.contains(&broken.display().to_string())
            && e.detail.contains("repair or remove it")
            && e.detail.contains("nothing was deleted"),
        "{}",
        e.detail
    );
    assert!(h.calls().is_empty(), "the service was touched");
    assert_eq!(
        std::fs::read(&broken).unwrap(),
        b"{\"service\": \"web\", trunc"
    );
    assert_eq!(journal::read_current(&dir, "web"), Some(v3.0));
    let rb = h
        .run(Command::Rollback(RollbackCommand {
            command_id: "w-back".into(),
            service: "web".into(),
            from: v3.0,
        }))
        .await;
    assert!(!rb.ok && rb.evidence.unwrap().gate == "journal");
    assert_eq!(h.releases(), all);

    // The operator sees it: in the inventory and in diag.
    let inv = h.installer.inventory().await;
    let web = inv.iter().find(|s| s.name == "web").expect("web listed");
    assert_eq!(web.state, journal::UNREADABLE);
    assert_eq!(web.current.as_ref().unwrap().tarball_sha256, Some(v3.0));
    let logs = h.installer.logs(5).await;
    let detail = logs
        .iter()
        .find(|l| l.service == "web")
        .and_then(|l| l.detail.clone())
        .expect("web in diag");
    assert!(detail.contains(&broken.display().to_string()), "{detail}");

    // Removed by the operator: collection resumes and keeps web's release.
    std::fs::remove_file(&broken).unwrap();
    h.run(install("c5", "2", v2)).await;
    let mut left = [v2, v3, v4].map(|a| a.0.to_hex()).to_vec();
    left.sort();
    assert_eq!(h.releases(), left);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_journal_does_not_forget_a_service_whose_current_link_remains() {
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let [v1, v2, v3] = ["1", "2", "3"].map(|v| artifact(&h.world, v));
    h.run(install("c1", "1", v1)).await;
    std::fs::remove_file(Journal::path(&dir, "api")).unwrap();
    std::fs::write(journal::service_dir(&dir, "api").join("pid"), "4242 1\n").unwrap();
    h.restart();
    h.installer.recover().await;

    let inv = h.installer.inventory().await;
    let api = inv.iter().find(|s| s.name == "api").expect("api forgotten");
    assert_eq!(api.state, journal::MISSING);
    assert_eq!(api.current.as_ref().unwrap().tarball_sha256, Some(v1.0));
    let logs = h.installer.logs(5).await;
    let detail = logs.iter().find_map(|l| l.detail.clone()).unwrap();
    assert!(
        detail.contains("missing") && detail.contains("pid file"),
        "{detail}"
    );

    // Another service's install collects garbage: the orphan's release stays.
    h.run(install_of("web", "w2", "2", v2)).await;
    assert!(
        journal::release_dir(&dir, &v1.0).is_dir(),
        "orphan's release deleted"
    );

    // The next install of api stops what still runs before starting.
    h.calls();
    let r = h.run(install("c3", "3", v3)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        h.calls(),
        [
            "stop".to_string(),
            format!("start {}", &v3.0.to_hex()[..12])
        ]
    );
    assert_eq!(h.journal().current.unwrap().sha256, v3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stray_directory_with_an_invalid_name_stays_out_of_the_inventory_and_is_left_alone() {
    use std::os::unix::ffi::OsStrExt;
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let [v1, v2, v3] = ["1", "2", "3"].map(|v| artifact(&h.world, v));
    h.run(install("c1", "1", v1)).await;
    h.run(install("c2", "2", v2)).await;
    // Strays: one with a name no service may have, its `current` pointing
    // at v1 (which api will no longer need), and one whose name is not UTF-8.
    let bad = journal::service_dir(&dir, "bad name!");
    std::fs::create_dir_all(&bad).unwrap();
    journal::switch_current(&dir, "bad name!", &v1.0).unwrap();
    std::fs::write(bad.join("journal.json"), b"not json").unwrap();
    let raw = dir
        .join("services")
        .join(std::ffi::OsStr::from_bytes(b"\xff\xfeweb"));
    std::fs::create_dir_all(&raw).unwrap();
    let r = h.run(install("c3", "3", v3)).await;
    assert!(r.ok, "{r:?}");

    let inventory = h.installer.inventory().await;
    let wire: Vec<cutover_proto::v1::InstalledService> = inventory.iter().map(Into::into).collect();
    let checked = cutover_proto::convert::services_from_wire(wire)
        .expect("the controller would refuse this inventory");
    let names: Vec<&str> = checked.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api"]);
    assert!(h.installer.logs(5).await.iter().all(|l| l.service == "api"));

    h.installer.releases.collect_garbage();
    assert!(
        bad.join("journal.json").is_file() && raw.is_dir(),
        "a stray was touched"
    );
    // What the stray's link points at is kept; what nothing needs goes.
    let mut want = vec![v1.0.to_hex(), v2.0.to_hex(), v3.0.to_hex()];
    want.sort();
    assert_eq!(h.releases(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_services_entry_that_cannot_be_examined_keeps_every_release() {
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let [v1, v2, v3] = ["1", "2", "3"].map(|v| artifact(&h.world, v));
    h.run(install("c1", "1", v1)).await;
    h.run(install("c2", "2", v2)).await;
    // A symlink to itself: stat fails with ELOOP (root is not spared).
    let services = dir.join("services");
    std::os::unix::fs::symlink("web", services.join("web")).unwrap();
    // api moves on, so v1 is needed by nothing that can be read.
    let r = h.run(install("c3", "3", v3)).await;
    assert!(r.ok, "{r:?}");
    let all = {
        let mut v = [v1, v2, v3].map(|a| a.0.to_hex()).to_vec();
        v.sort();
        v
    };
    assert_eq!(h.releases(), all, "a release was deleted");
    let inventory = h.installer.inventory().await;
    let web = inventory.iter().find(|s| s.name == "web").expect("web");
    assert_eq!(web.state, journal::UNREADABLE);
    assert!(inventory.iter().any(|s| s.name == "api"));

    // The same under a name that is no service's: kept out of the
    // inventory, but still nothing is deleted.
    std::fs::remove_file(services.join("web")).unwrap();
    std::os::unix::fs::symlink("bad loop", services.join("bad loop")).unwrap();
    h.installer.releases.collect_garbage();
    assert_eq!(h.releases(), all, "a release was deleted");
    let scan = Journal::scan(&dir).unwrap();
    assert_eq!(scan.damaged.len(), 1, "{:?}", scan.damaged);

    // Gone, GC goes on as before.
    std::fs::remove_file(services.join("bad loop")).unwrap();
    h.installer.releases.collect_garbage();
    let mut left = vec![v2.0.to_hex(), v3.0.to_hex()];
    left.sort();
    assert_eq!(h.releases(), left);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_install_after_a_deleted_journal_rolls_back_to_the_release_current_pointed_at() {
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let [v1, v2] = ["1", "2"].map(|v| artifact(&h.world, v));
    h.run(install("c1", "1", v1)).await;
    std::fs::remove_file(Journal::path(&dir, "api")).unwrap();
    h.restart();
    h.installer.recover().await;

    // The new release fails its checks: what ran before is not deleted
    // and is recorded as the release to go back to.
    h.make_sick(&v2.0);
    h.calls();
    let r = h.run(install("c2", "2", v2)).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        journal::release_dir(&dir, &v1.0).is_dir(),
        "the release that ran was deleted"
    );
    let previous = r.installed.previous.as_ref().expect("no previous reported");
    assert_eq!(
        (previous.tarball_sha256, previous.release.as_str()),
        (Some(v1.0), "unknown")
    );
    assert_eq!(h.journal().previous.map(|s| s.sha256), Some(v1.0));

    h.calls();
    let back = h
        .run(Command::Rollback(RollbackCommand {
            command_id: "c2-rollback".into(),
            service: "api".into(),
            from: v2.0,
        }))
        .await;
    assert!(back.ok, "{back:?}");
    assert_eq!(journal::read_current(&dir, "api"), Some(v1.0));
    assert_eq!(
        h.calls(),
        [
            "stop".to_string(),
            format!("start {}", &v1.0.to_hex()[..12])
        ]
    );
    assert_eq!(h.journal().current.map(|s| s.sha256), Some(v1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_named_like_a_release_is_never_removed_and_is_warned_about_once() {
    let mut h = harness();
    let dir = h.installer.data_dir.clone();
    let v1 = artifact(&h.world, "1");
    h.run(install("c1", "1", v1)).await;
    let stray = journal::releases_dir(&dir).join("ab".repeat(32));
    std::fs::write(&stray, b"not a release").unwrap();
    let linked = journal::releases_dir(&dir).join("cd".repeat(32));
    std::os::unix::fs::symlink("/tmp", &linked).unwrap();

    let unneeded = h.installer.releases.unneeded_releases().expect("GC runs");
    assert!(unneeded.is_empty(), "{unneeded:?}");
    h.installer.releases.collect_garbage();
    h.installer.releases.collect_garbage();
    assert_eq!(std::fs::read(&stray).unwrap(), b"not a release");
    assert!(linked.symlink_metadata().unwrap().file_type().is_symlink());
    // Both were noted (and logged) by the first GC, so never again this run.
    assert!(!h.installer.releases.note_not_a_release(&stray));
    assert!(!h.installer.releases.note_not_a_release(&linked));
    assert!(journal::release_dir(&dir, &v1.0).is_dir());
}
