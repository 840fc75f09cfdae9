//! The etcd backend against a real etcd (Debian's `etcd-server`): the trait's semantics as the
//! embedded store has them, plus a second client seeing the first one's data.

mod common;

use common::{obj, parse, resource_version};
use store::etcd::LocalEtcd;
use store::{Error, EtcdStore, EventType, ListOptions, Store};

#[tokio::test]
async fn crud_cas_list_watch_against_etcd() {
    let etcd = LocalEtcd::start().await.expect("etcd must be installed");
    let s = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/t")
        .await
        .unwrap();
    let base = s.revision();

    let a = s.create("/a", obj(1)).await.unwrap();
    assert!(a.mod_revision > base);
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(resource_version(&a), a.mod_revision.to_string());
    assert_eq!(parse(&a)["spec"]["n"], 1);
    // Read-your-writes: the mirror holds the write once it resolved.
    assert_eq!(s.get("/a").unwrap(), Some(a.clone()));
    assert!(matches!(
        s.create("/a", obj(2)).await,
        Err(Error::AlreadyExists { .. })
    ));

    let a2 = s.update("/a", obj(2), Some(a.mod_revision)).await.unwrap();
    assert_eq!(a2.create_revision, a.create_revision);
    assert!(a2.mod_revision > a.mod_revision);
    let err = s
        .update("/a", obj(3), Some(a.mod_revision))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { expected, actual, .. } if expected == a.mod_revision && actual == a2.mod_revision),
        "{err}"
    );
    let a3 = s.update("/a", obj(3), None).await.unwrap();
    assert!(matches!(
        s.update("/b", obj(1), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/b", obj(1), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/a", obj(1), Some(a2.mod_revision)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        s.create("/bad", serde_json::json!([1])).await,
        Err(Error::InvalidValue { .. })
    ));

    // Watch from a3: the delete carries the final state handed to `delete`, stamped.
    let mut w = s.watch("/a", a3.mod_revision).unwrap();
    let gone = s.delete("/a", obj(9), Some(a3.mod_revision)).await.unwrap();
    assert_eq!(parse(&gone)["spec"]["n"], 9);
    assert_eq!(resource_version(&gone), gone.mod_revision.to_string());
    assert_eq!(s.get("/a").unwrap(), None);
    let ev = w.rx.recv().await.unwrap();
    assert_eq!(ev.kind, EventType::Deleted);
    assert_eq!(ev.kv.mod_revision, gone.mod_revision);
    assert_eq!(parse(&ev.kv)["spec"]["n"], 9);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(ev.prev.as_ref().unwrap()).unwrap()["spec"]["n"],
        3
    );

    // A watch from before the writes replays them in order, from the mirror's history.
    let mut all = s.watch("/", base).unwrap();
    let kinds: Vec<EventType> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(all.rx.recv().await.unwrap().kind);
        }
        v
    };
    assert_eq!(
        kinds,
        [
            EventType::Added,
            EventType::Modified,
            EventType::Modified,
            EventType::Deleted
        ]
    );

    // Lists with a prefix, a limit and a continuation point.
    for i in 0..5 {
        s.create(&format!("/l/{i}"), obj(i)).await.unwrap();
    }
    s.create("/m/0", obj(0)).await.unwrap();
    let page = s
        .list(&ListOptions {
            prefix: "/l/",
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.more);
    assert_eq!(page.remaining, 3);
    let rest = s
        .list(&ListOptions {
            prefix: "/l/",
            start_after: Some(&page.items[1].key),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert_eq!(s.count("/l/").unwrap(), 5);

    // A second store on the same etcd loads everything under its prefix; writes from one
    // reach the other's watchers.
    let other = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/t")
        .await
        .unwrap();
    assert_eq!(other.count("/").unwrap(), 6);
    assert_eq!(other.get("/l/3").unwrap(), s.get("/l/3").unwrap());
    let mut ow = other.watch("/m/", other.revision()).unwrap();
    let m1 = s.create("/m/1", obj(1)).await.unwrap();
    let ev = ow.rx.recv().await.unwrap();
    assert_eq!(
        (ev.kind, ev.kv.mod_revision),
        (EventType::Added, m1.mod_revision)
    );
    // Another prefix is another store.
    let elsewhere = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/u")
        .await
        .unwrap();
    assert_eq!(elsewhere.count("/").unwrap(), 0);

    s.close().await.unwrap();
    assert!(matches!(s.get("/l/0"), Err(Error::Closed)));
    assert!(matches!(s.create("/z", obj(0)).await, Err(Error::Closed)));
}
