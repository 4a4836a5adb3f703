//! Installs that run at once: two services pinning one digest, garbage
//! collection while another install unpacks.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_services_pinning_one_tarball_at_once_share_one_whole_release_fetched_once() {
    let mut h = harness();
    let art = big_artifact(&h.world, 40);
    let dir = h.installer.data_dir.clone();
    h.world.held.store(true, Ordering::SeqCst);
    h.installer.submit(install_of("api", "c-api", "1", art));
    h.installer.submit(install_of("web", "c-web", "1", art));
    // Both installs are under way (journalled as preparing) while the
    // first transfer is held halfway.
    until("both installs preparing and one transfer open", || {
        let preparing = |s: &str| {
            matches!(
                Journal::load(&dir, s),
                Ok(Some(Journal {
                    op: Some(Op::Install {
                        stage: Stage::Preparing,
                        ..
                    }),
                    ..
                }))
            )
        };
        preparing("api") && preparing("web") && h.world.opens.load(Ordering::SeqCst) >= 1
    })
    .await;
    h.world.held.store(false, Ordering::SeqCst);
    let (a, b) = (
        h.outbox.recv().await.unwrap(),
        h.outbox.recv().await.unwrap(),
    );
    assert!(a.ok && b.ok, "{a:?}\n{b:?}");
    // One installer made it, the other waited and used it.
    assert_eq!(h.world.opens.load(Ordering::SeqCst), 1);
    assert_eq!(a.fetched_bytes + b.fetched_bytes, art.1);
    assert_eq!(h.releases(), [art.0.to_hex()], "staging left behind");
    let release = journal::release_dir(&dir, &art.0);
    for i in 0..40 {
        let data = std::fs::read(release.join(format!("data/{i}.bin"))).unwrap();
        assert_eq!(data, vec![i as u8; 8 * 1024], "file {i} torn");
    }
    assert_eq!(journal::read_current(&dir, "api"), Some(art.0));
    assert_eq!(journal::read_current(&dir, "web"), Some(art.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_another_installer_made_first_is_used_never_replaced_or_merged_into() {
    let mut h = harness();
    let v1 = artifact(&h.world, "1");
    let dest = journal::release_dir(&h.installer.data_dir, &v1.0);
    *h.world.winner.lock().unwrap() = Some(dest.clone());
    let r = h.run(install("c1", "1", v1)).await;
    assert!(r.ok, "{r:?}");
    // The winner's tree, as it was: ours was discarded, not merged in.
    assert!(dest.join("WINNER").is_file());
    assert!(!dest.join("VERSION").exists());
    assert_eq!(h.releases(), [v1.0.to_hex()], "staging left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_spares_a_live_staging_and_removes_what_dead_installs_left() {
    let mut h = harness();
    let art = big_artifact(&h.world, 20);
    let releases = h.installer.data_dir.join("releases");
    std::fs::create_dir_all(&releases).unwrap();
    // Left by killed agents: one of another pid, one of this very pid (a
    // restarted agent in a container is pid 1 again), older naming both.
    let dead = [
        releases.join(format!(".tmp-{}-1", art.0.to_hex())),
        releases.join(format!(".tmp-{}-{}", art.0.to_hex(), std::process::id())),
    ];
    for d in &dead {
        std::fs::create_dir_all(d.join("data")).unwrap();
    }
    h.world.held.store(true, Ordering::SeqCst);
    h.installer.submit(install("c1", "1", art));
    let live = || {
        std::fs::read_dir(&releases)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("data").is_dir() && !dead.contains(p))
    };
    until("the install unpacking into its staging", || {
        live().is_some()
    })
    .await;
    let staging = live().unwrap();
    h.installer.releases.collect_garbage();
    assert!(staging.is_dir(), "a live install's staging was removed");
    for d in &dead {
        assert!(!d.exists(), "{} was kept", d.display());
    }
    h.world.held.store(false, Ordering::SeqCst);
    let r = h.outbox.recv().await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(h.releases(), [art.0.to_hex()]);
}

/// An image store that loads what the tarball carries and counts lookups.
#[derive(Default)]
struct FakeImages {
    loaded: Mutex<HashSet<Sha256Digest>>,
    lookups: AtomicU64,
    loads: AtomicU64,
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl crate::install::backend::container::Images for FakeImages {
    fn has_image<'a>(&'a self, id: &'a Sha256Digest) -> Boxed<'a, bool> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.loaded.lock().unwrap().contains(id) })
    }

    fn load<'a>(
        &'a self,
        tarball: &'a Path,
        id: &'a Sha256Digest,
    ) -> Boxed<'a, Result<(), String>> {
        Box::pin(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let f = std::fs::File::open(tarball).map_err(|e| e.to_string())?;
            let carried = cutover_core::image::image_id(f)?;
            if carried != *id {
                return Err(format!("tarball holds {carried}"));
            }
            self.loaded.lock().unwrap().insert(carried);
            Ok(())
        })
    }

    fn pull<'a>(&'a self, _r: &'a str, _id: &'a Sha256Digest) -> Boxed<'a, Result<(), String>> {
        Box::pin(async { Err("no registry here".to_string()) })
    }
}

/// A `docker save` tarball (legacy layout) with a config padded so the
/// transfer is held after its first 512 bytes; returns (image id, tarball).
fn image_tarball(world: &World) -> (Sha256Digest, (Sha256Digest, u64)) {
    let config = format!(
        r#"{{"architecture":"amd64","config":{{}},"pad":"{}"}}"#,
        "x".repeat(8192)
    );
    let id = Sha256Digest::of(config.as_bytes());
    let mut b = tar::Builder::new(Vec::new());
    let manifest = format!(r#"[{{"Config":"{}.json","Layers":[]}}]"#, id.to_hex());
    for (path, data) in [
        ("manifest.json".to_string(), manifest.as_bytes()),
        (format!("{}.json", id.to_hex()), config.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let sha = Sha256Digest::of(&bytes);
    let size = bytes.len() as u64;
    world.artifacts.lock().unwrap().insert(sha, bytes);
    (id, (sha, size))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_container_services_pinning_one_image_tarball_fetch_it_once_and_both_load() {
    let h = harness();
    let (id, art) = image_tarball(&h.world);
    let images = Arc::new(FakeImages::default());
    let command = |service: &str| {
        let Command::Install(mut c) = install_of(service, &format!("c-{service}"), "1", art) else {
            unreachable!()
        };
        c.image = Some(cutover_core::rollout::ImageTarget {
            id,
            reference: None,
        });
        c
    };
    h.world.held.store(true, Ordering::SeqCst);
    let tasks = ["api", "web"].map(|s| {
        let (container, images, c) = (h.container.clone(), images.clone(), command(s));
        tokio::spawn(async move { container.ensure_image(images.as_ref(), &c).await })
    });
    // The first transfer is held halfway and the second install has looked
    // for the image (and found none): it must now wait, not fetch.
    until(
        "one transfer open and both installs past their first lookup",
        || h.world.opens.load(Ordering::SeqCst) >= 1 && images.lookups.load(Ordering::SeqCst) >= 2,
    )
    .await;
    // Room for a second transfer to start if nothing stops it (the
    // assertions below do not depend on how long this is).
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.world.held.store(false, Ordering::SeqCst);
    let mut fetched = 0;
    for t in tasks {
        fetched += t.await.unwrap().expect("the image install failed");
    }
    assert_eq!(h.world.opens.load(Ordering::SeqCst), 1, "fetched twice");
    assert_eq!(images.loads.load(Ordering::SeqCst), 1, "loaded twice");
    assert_eq!(fetched, art.1);
    assert!(images.loaded.lock().unwrap().contains(&id));
    let part = crate::install::fetch::part_path(&h.installer.data_dir, &art.0);
    assert!(!part.exists(), "{} left behind", part.display());
}

#[test]
fn a_staging_registered_while_garbage_collection_lists_the_directory_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let releases = dir.path().join("releases");
    let sha = Sha256Digest::of(b"x");
    let dead = releases.join(format!(".tmp-{}-1", sha.to_hex()));
    std::fs::create_dir_all(&dead).unwrap();
    let live = staging::Live::default();
    let mut started: Option<staging::Staging> = None;
    // The listing is read lazily: between its first and second entry
    // another install registers its staging and creates it, as one can
    // while garbage collection runs after some other service's command.
    let mut listing = vec![dead.clone()].into_iter();
    let paths = std::iter::from_fn(|| match (listing.next(), started.is_none()) {
        (Some(p), _) => Some(p),
        (None, true) => {
            let s = staging::Staging::new(&live, &releases, &sha);
            std::fs::create_dir_all(s.path().join("data")).unwrap();
            let p = s.path().to_path_buf();
            started = Some(s);
            Some(p)
        }
        (None, false) => None,
    });
    live.remove_dead(paths);
    let s = started.expect("the second install never started");
    assert!(
        s.path().join("data").is_dir(),
        "a live install's staging was removed mid-extraction"
    );
    assert!(!dead.exists(), "a dead install's staging was kept");
}
