//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{Value, json};
use store::{KeyValue, Options};

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Options for logic tests: no syncing.
pub fn fast() -> Options {
    Options {
        fsync: false,
        ..Options::default()
    }
}

pub fn obj(n: u64) -> Value {
    json!({"metadata": {"name": format!("o{n}")}, "spec": {"n": n}})
}

pub fn parse(kv: &KeyValue) -> Value {
    serde_json::from_slice(&kv.value).expect("stored values are JSON")
}

pub fn resource_version(kv: &KeyValue) -> String {
    parse(kv)["metadata"]["resourceVersion"]
        .as_str()
        .expect("stamped")
        .to_string()
}

/// What a store should hold: key → (value bytes, create revision, mod revision).
pub type Model = BTreeMap<String, KeyValue>;

pub fn items(model: &Model, prefix: &str) -> Vec<KeyValue> {
    model
        .values()
        .filter(|kv| kv.key.starts_with(prefix))
        .cloned()
        .collect()
}
