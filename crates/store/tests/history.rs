//! Lists at older revisions against a model that remembers the full map at every revision.

mod common;

use common::{Model, Rng, fast, items, obj};
use store::{EmbeddedStore, Error, ListOptions, Options, Store};

const KEYS: [&str; 12] = [
    "/a/1", "/a/2", "/a/3", "/a/30", "/ab", "/b/1", "/b/2", "/b/x/1", "/b/x/2", "/c", "/", "/a/",
];
const PREFIXES: [&str; 6] = ["", "/a/", "/a", "/b/", "/b/x/", "/zz"];

/// Runs random writes, checking each outcome, and returns the model at every revision.
async fn random_writes(s: &EmbeddedStore, rng: &mut Rng, ops: usize, history: &mut Vec<Model>) {
    for _ in 0..ops {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let mut model = history.last().cloned().unwrap_or_default();
        let current = model.get(key).cloned();
        let expected = match rng.below(3) {
            0 => None,
            1 => current.as_ref().map(|kv| kv.mod_revision),
            _ => Some(rng.below(history.len() as u64 + 2)),
        };
        let rev = s.revision();
        assert_eq!(rev as usize + 1, history.len());
        let n = rng.next() % 1000;
        let (result, kind) = match rng.below(3) {
            0 => (s.create(key, obj(n)).await, 0),
            1 => (s.update(key, obj(n), expected).await, 1),
            _ => (s.delete(key, obj(n), expected).await, 2),
        };
        let cas_ok = |kv: &store::KeyValue| expected.is_none_or(|e| e == kv.mod_revision);
        match (kind, &current, result) {
            (0, None, Ok(kv)) | (1, Some(_), Ok(kv)) => {
                assert_eq!(kv.mod_revision, rev + 1);
                if let Some(cur) = &current {
                    assert!(cas_ok(cur));
                    assert_eq!(kv.create_revision, cur.create_revision);
                }
                model.insert(key.to_string(), kv);
            }
            (2, Some(cur), Ok(kv)) => {
                assert!(cas_ok(cur));
                assert_eq!(kv.mod_revision, rev + 1);
                model.remove(key);
            }
            (0, Some(_), Err(Error::AlreadyExists { .. })) => {}
            (1 | 2, None, Err(Error::NotFound { .. })) => {}
            (1 | 2, Some(cur), Err(Error::Conflict { actual, .. })) => {
                assert!(!cas_ok(cur));
                assert_eq!(actual, cur.mod_revision);
            }
            (kind, current, result) => panic!("op {kind} on {current:?} gave {result:?}"),
        }
        if s.revision() > rev {
            history.push(model);
        }
    }
}

fn check_lists(s: &EmbeddedStore, rng: &mut Rng, history: &[Model], from: u64) {
    for r in from..history.len() as u64 {
        let model = &history[r as usize];
        for prefix in PREFIXES {
            let want = items(model, prefix);
            let at = Some(r);
            let got = s
                .list(&ListOptions {
                    prefix,
                    revision: at,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(got.items, want, "revision {r} prefix {prefix:?}");
            assert_eq!(got.revision, r);
            assert_eq!(
                s.count(prefix).unwrap() as usize,
                items(history.last().unwrap(), prefix).len()
            );

            let limit = 1 + rng.below(3) as usize;
            let start = KEYS[rng.below(KEYS.len() as u64) as usize];
            let odd = |kv: &store::KeyValue| kv.create_revision % 2 == 1;
            let want: Vec<_> = want
                .into_iter()
                .filter(|kv| &*kv.key > start && odd(kv))
                .collect();
            let got = s
                .list(&ListOptions {
                    prefix,
                    start_after: Some(start),
                    limit,
                    revision: at,
                    filter: Some(&odd),
                })
                .unwrap();
            assert_eq!(
                got.items,
                want[..want.len().min(limit)],
                "revision {r} page"
            );
            let rest = want.len().saturating_sub(limit) as u64;
            assert_eq!((got.more, got.remaining), (rest > 0, rest));
        }
    }
}

#[tokio::test]
async fn list_at_revision_matches_model() {
    for seed in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), fast()).unwrap();
        let mut rng = Rng::new(seed);
        let mut history = vec![Model::new()];
        random_writes(&s, &mut rng, 600, &mut history).await;
        assert!(
            history.len() > 200,
            "seed {seed}: too few successful writes"
        );
        check_lists(&s, &mut rng, &history, 0);

        let cut = history.len() as u64 / 2;
        s.compact(cut).unwrap();
        check_lists(&s, &mut rng, &history, cut);
        let err = s.list(&ListOptions {
            revision: Some(cut - 1),
            ..Default::default()
        });
        assert!(matches!(err, Err(Error::Compacted { .. })));
    }
}

#[tokio::test]
async fn history_is_bounded_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: false,
        history: 100,
        history_bytes: usize::MAX,
        segment_bytes: 4096,
    };
    let mut rng = Rng::new(99);
    let mut history = vec![Model::new()];
    {
        let s = EmbeddedStore::open(dir.path(), opts.clone()).unwrap();
        random_writes(&s, &mut rng, 800, &mut history).await;
        let current = s.revision();
        assert_eq!(s.oldest_revision(), current - 99);
        check_lists(&s, &mut rng, &history, current - 100);
        assert!(s.stats().snapshots > 0);
        s.close().await.unwrap();
    }
    let s = EmbeddedStore::open(dir.path(), opts).unwrap();
    assert_eq!(s.revision() as usize + 1, history.len());
    let oldest = s.oldest_revision();
    assert!(oldest <= s.revision() + 1);
    check_lists(&s, &mut rng, &history, oldest - 1);
    random_writes(&s, &mut rng, 200, &mut history).await;
    check_lists(&s, &mut rng, &history, s.oldest_revision() - 1);
}
