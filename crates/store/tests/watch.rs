//! Watches: replay then live delivery, compaction, slow watchers, many watchers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fast, obj};
use store::{EmbeddedStore, Error, Event, EventType, Options, Store, Watch};
use tokio::time::timeout;

async fn next(w: &mut Watch) -> Arc<Event> {
    timeout(Duration::from_secs(10), w.rx.recv())
        .await
        .expect("event in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_with_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    for i in 0..300 {
        s.create(&format!("/w/pre{i}"), obj(i)).await.unwrap();
        s.create(&format!("/other/{i}"), obj(i)).await.unwrap();
    }
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let key = format!("/w/{t}/{}", i % 20);
                    if i < 20 {
                        s.create(&key, obj(i)).await.unwrap();
                    } else if i < 180 {
                        s.update(&key, obj(i), None).await.unwrap();
                    } else {
                        s.delete(&key, obj(i), None).await.unwrap();
                    }
                    s.create(&format!("/other/{t}/{i}"), obj(i)).await.unwrap();
                }
            })
        })
        .collect();
    // Watchers join while writes run, from different points in the past, with small and
    // large replays; each reads until the end marker.
    let mut readers = Vec::new();
    for after in [0, 10, 299, 600] {
        let mut w = s.watch("/w/", after).unwrap();
        readers.push(tokio::spawn(async move {
            let mut last = after;
            let mut seen = 0;
            let mut live = std::collections::HashMap::new();
            loop {
                let event = next(&mut w).await;
                assert!(event.kv.key.starts_with("/w/"));
                assert!(event.kv.mod_revision > last, "out of order or duplicated");
                last = event.kv.mod_revision;
                seen += 1;
                if &*event.kv.key == "/w/end" {
                    return (after, seen);
                }
                let existed = live.insert(event.kv.key.clone(), event.kind != EventType::Deleted);
                match event.kind {
                    EventType::Added => assert!(!existed.unwrap_or(false)),
                    EventType::Modified | EventType::Deleted => {
                        assert!(event.prev.is_some());
                        assert!(existed.unwrap_or(after > 0), "change to a key never added");
                    }
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(s.revision(), 600 + 8 * 400);
    s.create("/w/end", obj(0)).await.unwrap();
    for reader in readers {
        let (after, seen) = reader.await.unwrap();
        // The preload wrote "/w/" at odd revisions; then 8 × 200 writes, then the marker.
        let pre = (0..300u64)
            .map(|i| 2 * i + 1)
            .filter(|&r| r > after)
            .count();
        assert_eq!(seen, pre + 8 * 200 + 1, "watch from {after}");
    }
}

#[tokio::test]
async fn watch_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(
        dir.path(),
        Options {
            history: 10,
            ..fast()
        },
    )
    .unwrap();
    for i in 0..30 {
        s.create(&format!("/k{i}"), obj(i)).await.unwrap();
    }
    assert_eq!(s.oldest_revision(), 21);
    assert!(matches!(
        s.watch("", 19),
        Err(Error::Compacted {
            requested: 19,
            oldest: 21
        })
    ));
    let mut w = s.watch("", 20).unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, 21);
    s.compact(25).unwrap();
    assert!(matches!(
        s.watch("", 24),
        Err(Error::Compacted {
            requested: 24,
            oldest: 26
        })
    ));
    let mut w = s.watch("", 25).unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, 26);
    assert!(matches!(
        s.watch("", 31),
        Err(Error::FutureRevision {
            requested: 31,
            current: 30
        })
    ));
    let mut w = s.watch("", 30).unwrap();
    s.create("/a", obj(0)).await.unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, 31);
}

#[tokio::test]
async fn slow_watcher_is_dropped_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let mut slow = s.watch("/", 0).unwrap();
    let mut other = s.watch("/", 0).unwrap();
    let drain = tokio::spawn(async move {
        let mut n = 0;
        while other.rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let total = 3 * store::embedded::WATCH_CAPACITY as u64;
    let start = std::time::Instant::now();
    for i in 0..total {
        s.create(&format!("/k{i}"), obj(i)).await.unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    let mut got = 0;
    while let Some(event) = slow.rx.recv().await {
        got += 1;
        assert_eq!(event.kv.mod_revision, got);
    }
    assert_eq!(
        got,
        store::embedded::WATCH_CAPACITY as u64,
        "stream ends after the buffer"
    );
    s.close().await.unwrap();
    assert_eq!(
        drain.await.unwrap(),
        total,
        "a reader that keeps up sees everything"
    );
}

#[tokio::test]
async fn large_replay_is_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let n = 5000u64;
    let writes: Vec<_> = (0..n)
        .map(|i| s.create(&format!("/k/{i}"), obj(i)))
        .collect();
    futures::future::join_all(writes).await;
    let mut w = s.watch("/k/", 0).unwrap();
    let more: Vec<_> = (n..n + 100)
        .map(|i| s.create(&format!("/k/{i}"), obj(i)))
        .collect();
    futures::future::join_all(more).await;
    for rev in 1..=n + 100 {
        assert_eq!(next(&mut w).await.kv.mod_revision, rev);
    }
    // Dropping the stream releases the store's side.
    drop(w);
    s.create("/k/last", obj(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.create("/k/last2", obj(0)).await.unwrap();
    assert_eq!(s.stats().watchers, 0);
}

#[tokio::test]
async fn many_watchers_on_many_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    let mut watches = Vec::new();
    for i in 0..2000 {
        let prefix = match i % 4 {
            0 => String::new(),
            1 => "/pods/".to_string(),
            2 => format!("/pods/ns{}/", i % 10),
            _ => format!("/cm/ns{}/", i % 10),
        };
        watches.push((prefix.clone(), s.watch(&prefix, 0).unwrap()));
    }
    assert_eq!(s.stats().watchers, 2000);
    for i in 0..100u64 {
        s.create(&format!("/pods/ns{}/p{i}", i % 10), obj(i))
            .await
            .unwrap();
        // A key that is a prefix match only byte-wise must not confuse char boundaries.
        s.create(&format!("/cm/ns{}/é{i}", i % 10), obj(i))
            .await
            .unwrap();
    }
    for (prefix, mut w) in watches {
        let want = match prefix.as_str() {
            "" => 200,
            "/pods/" => 100,
            _ => 10,
        };
        for _ in 0..want {
            assert!(next(&mut w).await.kv.key.starts_with(&prefix));
        }
        assert!(w.rx.try_recv().is_err(), "{prefix}");
    }
}

#[tokio::test]
async fn watch_history_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        for i in 0..50 {
            s.create(&format!("/k{}", i % 7), obj(i)).await.ok();
            s.update(&format!("/k{}", i % 5), obj(i), None).await.ok();
        }
        s.delete("/k1", obj(0), None).await.unwrap();
        s.close().await.unwrap();
    }
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    assert_eq!(s.oldest_revision(), 1);
    let end = s.revision();
    let mut w = s.watch("", 0).unwrap();
    let mut live = std::collections::HashMap::new();
    for rev in 1..=end {
        let event = next(&mut w).await;
        assert_eq!(event.kv.mod_revision, rev);
        let before = live.insert(event.kv.key.clone(), event.kv.value.clone());
        assert_eq!(event.prev, before);
        if event.kind == EventType::Deleted {
            live.remove(&event.kv.key);
            assert_eq!(&*event.kv.key, "/k1");
        }
    }
    s.create("/new", obj(0)).await.unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, end + 1);
}

#[tokio::test]
async fn history_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(
        dir.path(),
        Options {
            history_bytes: 10_000,
            ..fast()
        },
    )
    .unwrap();
    let sized = |n: usize| serde_json::json!({"metadata": {"name": "x"}, "data": "x".repeat(n)});
    for i in 0..30 {
        let kv = s.create(&format!("/k{i}"), sized(950)).await.unwrap();
        assert!((1000..1050).contains(&kv.value.len()));
    }
    // Nine of these ~1,000-byte values fit the budget.
    assert_eq!(s.oldest_revision(), 22);
    assert!(matches!(s.watch("", 20), Err(Error::Compacted { .. })));
    let mut w = s.watch("", 21).unwrap();
    assert_eq!(next(&mut w).await.kv.mod_revision, 22);
    // An update holds its new and its previous value.
    s.update("/k29", sized(950), Some(30)).await.unwrap();
    assert_eq!(s.oldest_revision(), 24);
    // A single event larger than the budget is still retained, so watchers can resume.
    s.create("/huge", sized(20_000)).await.unwrap();
    assert_eq!(s.oldest_revision(), 32);
}
