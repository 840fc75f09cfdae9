//! Kill -9 a writing process and check that every acknowledged write survived.
//!
//! The test re-executes its own binary as the child: with `SKIFF_STORE_CRASH_CHILD` set, the
//! test function becomes a writer that prints `ACK <key> <n>` once each create is durable.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use store::{EmbeddedStore, Options, Store};

const CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD";
const ROUND_ENV: &str = "SKIFF_STORE_CRASH_ROUND";

fn options() -> Options {
    // Small segments so rotations and snapshots happen while the child is killed.
    Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    }
}

fn child(dir: &Path, round: u64) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let s = EmbeddedStore::open(dir, options()).expect("child opens the store");
        let writers: Vec<_> = (0..50)
            .map(|w| {
                let s: Arc<EmbeddedStore> = s.clone();
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let key = format!("/crash/{round}/{w}/{n}");
                        let value =
                            json!({"metadata": {"name": key}, "n": n, "pad": "x".repeat(100)});
                        s.create(&key, value).await.expect("create");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {key} {n}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
    unreachable!("writers never finish")
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
        child(Path::new(&dir), round);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(String, u64)> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "acknowledged_writes_survive_kill_9",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            // Read to EOF; a line cut short by the kill has no newline and is not an ack.
            while stdout.read_until(b'\n', &mut line).unwrap() > 0 {
                if let Some(ack) = line
                    .strip_suffix(b"\n")
                    .and_then(|l| l.strip_prefix(b"ACK "))
                {
                    let ack = std::str::from_utf8(ack).unwrap();
                    let (key, n) = ack.split_once(' ').unwrap();
                    acks.push((key.to_string(), n.parse::<u64>().unwrap()));
                }
                line.clear();
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().unwrap();
        child.wait().unwrap();
        let new = reader.join().unwrap();
        assert!(new.len() > 100, "round {round}: only {} acks", new.len());
        eprintln!(
            "round {round}: {} acknowledged writes before the kill",
            new.len()
        );
        acked.extend(new);

        let s = EmbeddedStore::open(dir.path(), options()).expect("store opens after a crash");
        for (key, n) in &acked {
            let kv = s
                .get(key)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} lost"));
            let value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(value["n"], *n);
            assert_eq!(
                value["metadata"]["resourceVersion"],
                kv.mod_revision.to_string()
            );
        }
        // Only creates ran, each with its own revision.
        assert_eq!(s.revision(), s.count("").unwrap());
    }
}
