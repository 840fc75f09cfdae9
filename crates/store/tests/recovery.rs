//! Durability: reopening, torn log tails, corruption, rotation with snapshots, group commit.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Model, Rng, fast, items, obj, parse};
use store::{EmbeddedStore, Error, ListOptions, Options, Store};

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// End offsets of the complete records in a segment (frames are `len | crc | payload`).
fn record_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
        ends.push(at);
    }
    assert_eq!(at, data.len());
    ends
}

fn all(s: &EmbeddedStore) -> Vec<store::KeyValue> {
    s.list(&ListOptions::default()).unwrap().items
}

#[tokio::test]
async fn reopen_keeps_state_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let s = EmbeddedStore::open(dir.path(), Options::default()).unwrap();
        for i in 0..20 {
            s.create(&format!("/k{i}"), obj(i)).await.unwrap();
        }
        s.update("/k3", obj(33), Some(4)).await.unwrap();
        s.delete("/k4", obj(44), None).await.unwrap();
        before = all(&s);
        // No close: dropping must be enough.
    }
    let s = EmbeddedStore::open(dir.path(), Options::default()).unwrap();
    assert_eq!(s.revision(), 22);
    assert_eq!(all(&s), before);
    let k3 = s.get("/k3").unwrap().unwrap();
    assert_eq!((k3.create_revision, k3.mod_revision), (4, 21));
    assert_eq!(parse(&k3)["spec"]["n"], 33);
    let next = s.create("/k4", obj(4)).await.unwrap();
    assert_eq!((next.create_revision, next.mod_revision), (23, 23));
    let at = s
        .list(&ListOptions {
            revision: Some(20),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(at.items.len(), 20);
}

#[tokio::test]
async fn torn_tail_is_truncated_to_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        for i in 0..40 {
            s.create(&format!("/k{i:02}"), obj(i)).await.unwrap();
        }
    }
    let [segment] = &files(dir.path(), "wal-")[..] else {
        panic!("one segment expected")
    };
    let original = fs::read(segment).unwrap();
    let ends = record_ends(&original);
    assert_eq!(ends.len(), 40);
    let mut rng = Rng::new(7);
    for round in 0..40 {
        let cut = rng.below(original.len() as u64 + 1) as usize;
        let mut data = original[..cut].to_vec();
        if round % 2 == 1 {
            data.extend((0..rng.below(64)).map(|_| rng.next() as u8));
        }
        fs::write(segment, &data).unwrap();
        let kept = ends.iter().filter(|&&end| end <= cut).count() as u64;
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        assert_eq!(s.revision(), kept, "cut at {cut}");
        assert_eq!(s.count("").unwrap(), kept);
        for i in 0..kept {
            let kv = s.get(&format!("/k{i:02}")).unwrap().unwrap();
            assert_eq!(parse(&kv)["spec"]["n"], i);
        }
        // The store keeps working on top of the repaired log.
        s.create("/extra", obj(0)).await.unwrap();
        drop(s);
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        assert_eq!(s.revision(), kept + 1);
        assert!(s.get("/extra").unwrap().is_some());
    }
}

/// Splits the store's one segment into two at a record boundary.
fn split_segment(dir: &Path, at_record: usize) -> (PathBuf, PathBuf) {
    let [segment] = &files(dir, "wal-")[..] else {
        panic!("one segment expected")
    };
    let data = fs::read(segment).unwrap();
    let cut = record_ends(&data)[at_record - 1];
    let second = dir.join(format!("wal-{:020}.log", at_record + 1));
    fs::write(segment, &data[..cut]).unwrap();
    fs::write(&second, &data[cut..]).unwrap();
    (segment.clone(), second)
}

#[tokio::test]
async fn corruption_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        for i in 0..30 {
            s.create(&format!("/k{i}"), obj(i)).await.unwrap();
        }
    }
    let (first, second) = split_segment(dir.path(), 10);
    {
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        assert_eq!(s.revision(), 30, "a split log replays whole");
        assert_eq!(s.count("").unwrap(), 30);
    }
    let mut data = fs::read(&first).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x55;
    fs::write(&first, &data).unwrap();
    let err = EmbeddedStore::open(dir.path(), fast())
        .err()
        .expect("corrupt");
    let Error::Corrupt(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("wal-00000000000000000001.log"),
        "{message}"
    );
    assert!(message.contains("offset"), "{message}");

    // A missing segment in the middle is a gap, not a silent loss.
    data[middle] ^= 0x55;
    fs::write(&first, &data).unwrap();
    let renamed = dir.path().join("wal-00000000000000000012.log");
    fs::rename(&second, &renamed).unwrap();
    assert!(matches!(
        EmbeddedStore::open(dir.path(), fast()),
        Err(Error::Corrupt(_))
    ));
    fs::rename(&renamed, &second).unwrap();
    fs::remove_file(&first).unwrap();
    assert!(matches!(
        EmbeddedStore::open(dir.path(), fast()),
        Err(Error::Corrupt(_))
    ));
}

async fn random_ops(s: &EmbeddedStore, rng: &mut Rng, n: usize, model: &mut Model) {
    for _ in 0..n {
        let key = format!("/r/{}", rng.below(300));
        let op = rng.below(4);
        let result = match op {
            0 => s.delete(&key, obj(0), None).await,
            1 => s.update(&key, obj(rng.next() % 100), None).await,
            _ => s.create(&key, obj(rng.next() % 100)).await,
        };
        let Ok(kv) = result else { continue };
        if op == 0 {
            model.remove(&key);
        } else {
            model.insert(key, kv);
        }
    }
}

#[tokio::test]
async fn rotation_and_snapshots_reopen_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: true,
        segment_bytes: 8 << 10,
        history: 1000,
        history_bytes: usize::MAX,
    };
    let mut rng = Rng::new(3);
    let mut model = Model::new();
    for round in 0..3 {
        let s = EmbeddedStore::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(all(&s), items(&model, ""), "round {round}");
        random_ops(&s, &mut rng, 1500, &mut model).await;
        assert_eq!(all(&s), items(&model, ""));
        let stats = s.stats();
        assert!(stats.snapshots >= 1, "{stats:?}");
        s.close().await.unwrap();
        // Old segments and snapshots are cleaned up.
        assert!(files(dir.path(), "wal-").len() <= 3);
        assert!(files(dir.path(), "snap-").len() <= 2);
    }
    // A crash mid-snapshot leaves a temporary file, which is ignored and removed.
    fs::write(dir.path().join("snap-00000000000000999999.tmp"), b"partial").unwrap();
    let s = EmbeddedStore::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(all(&s), items(&model, ""));
    assert!(!dir.path().join("snap-00000000000000999999.tmp").exists());
    drop(s);

    // A damaged newest snapshot falls back to an older one when the log still covers it,
    // and is an error when it does not.
    let snaps = files(dir.path(), "snap-");
    let newest = snaps.last().unwrap();
    fs::write(newest, b"garbage").unwrap();
    assert!(matches!(
        EmbeddedStore::open(dir.path(), opts),
        Err(Error::Corrupt(_))
    ));
}

#[tokio::test]
async fn snapshot_fallback_with_covering_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        for i in 0..10 {
            s.create(&format!("/k{i}"), obj(i)).await.unwrap();
        }
    }
    // A snapshot that cannot be read, over a log that starts at revision 1.
    fs::write(dir.path().join("snap-00000000000000000005.snap"), b"junk").unwrap();
    let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
    assert_eq!(s.revision(), 10);
    assert_eq!(s.count("").unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), Options::default()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create(&format!("/k/{i}"), obj(i)).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap().unwrap().mod_revision);
    }
    revisions.sort();
    assert_eq!(revisions, (1..=200).collect::<Vec<_>>());
    let stats = s.stats();
    assert_eq!(stats.writes, 200);
    assert!(stats.batches < 100, "{stats:?}");
    eprintln!("200 creates in {} batches", stats.batches);
}
