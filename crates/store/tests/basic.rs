//! CRUD, compare-and-swap, stamping, lists and lifecycle of the embedded store.

mod common;

use common::{fast, obj, parse, resource_version};
use serde_json::json;
use store::{EmbeddedStore, Error, EventType, KeyValue, ListOptions, Options, Store};

#[tokio::test]
async fn crud_and_cas() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    assert_eq!(s.revision(), 0);
    assert_eq!(s.oldest_revision(), 1);

    let a = s.create("/a", obj(1)).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (1, 1));
    assert_eq!(resource_version(&a), "1");
    assert_eq!(parse(&a)["spec"]["n"], 1);
    assert_eq!(s.get("/a").unwrap(), Some(a.clone()));
    assert!(matches!(
        s.create("/a", obj(2)).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(s.revision(), 1, "a failed write consumes no revision");

    let a2 = s.update("/a", obj(2), Some(1)).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
    assert_eq!(resource_version(&a2), "2");
    let err = s.update("/a", obj(3), Some(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    let a3 = s.update("/a", obj(3), None).await.unwrap();
    assert_eq!(a3.mod_revision, 3);
    assert!(matches!(
        s.update("/b", obj(1), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/b", obj(1), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/a", obj(1), Some(2)).await,
        Err(Error::Conflict { .. })
    ));

    let mut w = s.watch("/a", 3).unwrap();
    let gone = s
        .delete(
            "/a",
            json!({"metadata": {"name": "a"}, "last": true}),
            Some(3),
        )
        .await;
    let gone = gone.unwrap();
    assert_eq!((gone.create_revision, gone.mod_revision), (1, 4));
    assert_eq!(resource_version(&gone), "4");
    assert_eq!(parse(&gone)["last"], true);
    assert_eq!(s.get("/a").unwrap(), None);
    let event = w.rx.recv().await.unwrap();
    assert_eq!(event.kind, EventType::Deleted);
    assert_eq!(event.kv, gone);
    assert_eq!(event.prev.as_ref(), Some(&a3.value));

    // Recreating starts a new life.
    let again = s.create("/a", obj(5)).await.unwrap();
    assert_eq!((again.create_revision, again.mod_revision), (5, 5));
    assert_eq!(s.revision(), 5);
    s.close().await.unwrap();
}

#[tokio::test]
async fn stamping_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let kv = s.create("/x", json!({"spec": 1})).await.unwrap();
    assert_eq!(
        parse(&kv),
        json!({"spec": 1, "metadata": {"resourceVersion": "1"}})
    );
    let kv = s
        .update("/x", json!({"metadata": {"resourceVersion": "77"}}), None)
        .await
        .unwrap();
    assert_eq!(resource_version(&kv), "2");
    for bad in [json!([1]), json!("s"), json!(null), json!({"metadata": 3})] {
        let err = s.create("/y", bad.clone()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidValue { .. }), "{bad}: {err}");
        let err = s.update("/x", bad, None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidValue { .. }));
    }
    assert_eq!(s.revision(), 2);
}

#[tokio::test]
async fn batch_sees_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    // Queued together without awaiting, so they likely share a batch; either way the outcome
    // must be as if they ran one by one.
    let f1 = s.create("/k", obj(1));
    let f2 = s.create("/k", obj(2));
    let f3 = s.update("/k", obj(3), Some(1));
    let f4 = s.update("/k", obj(4), Some(1));
    let f5 = s.delete("/k", obj(5), Some(2));
    let f6 = s.create("/k", obj(6));
    let (r1, r2, r3, r4, r5, r6) = futures::join!(f1, f2, f3, f4, f5, f6);
    assert_eq!(r1.unwrap().mod_revision, 1);
    assert!(matches!(r2, Err(Error::AlreadyExists { .. })));
    assert_eq!(r3.unwrap().mod_revision, 2);
    assert!(matches!(
        r4,
        Err(Error::Conflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    assert_eq!(r5.unwrap().mod_revision, 3);
    let r6 = r6.unwrap();
    assert_eq!((r6.create_revision, r6.mod_revision), (4, 4));
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| &*kv.key).collect()
}

#[tokio::test]
async fn list_options() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    for key in ["/p/a", "/p/b", "/p/c", "/p/d", "/q/a", "/pa", "/o"] {
        s.create(key, obj(key.len() as u64)).await.unwrap();
    }
    let list = |opts: ListOptions<'_>| s.list(&opts).unwrap();
    let all = list(ListOptions::default());
    assert_eq!(
        keys(&all.items),
        ["/o", "/p/a", "/p/b", "/p/c", "/p/d", "/pa", "/q/a"]
    );
    assert_eq!((all.revision, all.more, all.remaining), (7, false, 0));

    let p = list(ListOptions {
        prefix: "/p/",
        ..Default::default()
    });
    assert_eq!(keys(&p.items), ["/p/a", "/p/b", "/p/c", "/p/d"]);
    let page = list(ListOptions {
        prefix: "/p/",
        limit: 2,
        ..Default::default()
    });
    assert_eq!(keys(&page.items), ["/p/a", "/p/b"]);
    assert_eq!((page.more, page.remaining), (true, 2));
    let next = list(ListOptions {
        prefix: "/p/",
        limit: 2,
        start_after: Some("/p/b"),
        ..Default::default()
    });
    assert_eq!(keys(&next.items), ["/p/c", "/p/d"]);
    assert_eq!((next.more, next.remaining), (false, 0));
    // A start key before the prefix does not widen the range.
    let before = list(ListOptions {
        prefix: "/p/",
        start_after: Some("/a"),
        ..Default::default()
    });
    assert_eq!(before.items.len(), 4);
    let after = list(ListOptions {
        prefix: "/p/",
        start_after: Some("/z"),
        ..Default::default()
    });
    assert!(after.items.is_empty());

    let not_b = |kv: &KeyValue| !kv.key.ends_with('b');
    let filtered = list(ListOptions {
        prefix: "/p/",
        limit: 1,
        filter: Some(&not_b),
        ..Default::default()
    });
    assert_eq!(keys(&filtered.items), ["/p/a"]);
    assert_eq!((filtered.more, filtered.remaining), (true, 2));

    assert_eq!(s.count("").unwrap(), 7);
    assert_eq!(s.count("/p/").unwrap(), 4);
    assert_eq!(s.count("/p").unwrap(), 5);
    assert_eq!(s.count("/zz").unwrap(), 0);

    assert!(matches!(
        s.list(&ListOptions {
            revision: Some(8),
            ..Default::default()
        }),
        Err(Error::FutureRevision {
            requested: 8,
            current: 7
        })
    ));
    let at3 = list(ListOptions {
        revision: Some(3),
        ..Default::default()
    });
    assert_eq!(keys(&at3.items), ["/p/a", "/p/b", "/p/c"]);
    assert_eq!(at3.revision, 3);
    let at0 = list(ListOptions {
        revision: Some(0),
        ..Default::default()
    });
    assert!(at0.items.is_empty());

    s.compact(3).unwrap();
    assert_eq!(s.oldest_revision(), 4);
    assert!(
        list(ListOptions {
            revision: Some(3),
            ..Default::default()
        })
        .items
        .len()
            == 3
    );
    assert!(matches!(
        s.list(&ListOptions {
            revision: Some(2),
            ..Default::default()
        }),
        Err(Error::Compacted {
            requested: 2,
            oldest: 4
        })
    ));
    assert!(matches!(s.compact(9), Err(Error::FutureRevision { .. })));
    s.compact(1).unwrap();
    assert_eq!(s.oldest_revision(), 4, "compaction never moves back");
}

#[tokio::test]
async fn large_list_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let writes: Vec<_> = (0..10_000)
        .map(|i| s.create(&format!("/pods/{i:05}"), obj(i)))
        .collect();
    for w in futures::future::join_all(writes).await {
        w.unwrap();
    }
    let start = std::time::Instant::now();
    let list = s
        .list(&ListOptions {
            prefix: "/pods/",
            ..Default::default()
        })
        .unwrap();
    let took = start.elapsed();
    assert_eq!(list.items.len(), 10_000);
    assert_eq!(s.count("/pods/").unwrap(), 10_000);
    // Generous for debug builds on a busy machine; release is well under a few ms.
    assert!(took.as_millis() < 200, "list took {took:?}");
}

#[tokio::test]
async fn close_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let mut w = s.watch("", 0).unwrap();
    let pending: Vec<_> = (0..100)
        .map(|i| s.create(&format!("/k{i}"), obj(i)))
        .collect();
    s.close().await.unwrap();
    for p in futures::future::join_all(pending).await {
        p.unwrap();
    }
    assert!(matches!(
        s.create("/late", obj(0)).await,
        Err(Error::Closed)
    ));
    assert!(matches!(s.get("/k1"), Err(Error::Closed)));
    assert!(matches!(s.watch("", 0), Err(Error::Closed)));
    let mut seen = 0;
    while w.rx.recv().await.is_some() {
        seen += 1;
    }
    assert_eq!(seen, 100);
    s.close().await.unwrap();
    drop(s);
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    assert_eq!(s.count("").unwrap(), 100);
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), Options::default()).unwrap();
    let err = EmbeddedStore::open(dir.path(), Options::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    drop(s);
    EmbeddedStore::open(dir.path(), Options::default()).unwrap();
}

#[test]
fn usable_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    for i in 0..2000 {
        futures::executor::block_on(s.create(&format!("/k{i:04}"), obj(i))).unwrap();
    }
    // A replay larger than the channel goes through a forwarding thread here.
    let mut w = s.watch("/k", 0).unwrap();
    for i in 0..2000 {
        let event = w.rx.blocking_recv().unwrap();
        assert_eq!(event.kv.mod_revision, i + 1);
    }
}
