//! A real program whose work is mostly allocation, shared by the
//! `program_*` examples, which differ only in their `#[global_allocator]`:
//! JSON serialisation and parsing of a generated document (a tree of
//! maps, vectors and strings), a word count over generated text (a
//! string per word, a hash map), and a churn of an ordered map of string
//! keys and byte values. Every stage checks its own result, so an
//! allocator that lost or corrupted memory fails the run instead of
//! finishing fast.
//!
//! Deterministic: the same seed gives the same work in every build.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// splitmix64: a tiny deterministic generator (the program must do the
/// same work under every allocator).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A lowercase word of 2 to 12 letters.
    fn word(&mut self) -> String {
        let len = 2 + self.below(11);
        (0..len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// Builds a document of `records` records, serialises it, parses it back
/// and checks the round trip; returns the text's length.
fn json_round_trip(rng: &mut Rng, records: usize) -> usize {
    let items: Vec<Value> = (0..records)
        .map(|id| {
            let tags: Vec<Value> = (0..rng.below(6)).map(|_| Value::from(rng.word())).collect();
            json!({
                "id": id,
                "name": rng.word(),
                "score": rng.below(1_000_000) as f64 / 1000.0,
                "tags": tags,
                "owner": { "login": rng.word(), "karma": rng.below(5000) },
            })
        })
        .collect();
    let doc = json!({ "version": 3, "items": items });
    let text = serde_json::to_string(&doc).expect("serialise");
    let back: Value = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, doc, "the JSON round trip changed the document");
    let ids: usize = back["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_u64().expect("id") as usize)
        .sum();
    assert_eq!(ids, records * (records - 1) / 2);
    text.len()
}

/// Counts the words of generated text (each lowercased into a string of
/// its own); returns the number of distinct words.
fn word_count(rng: &mut Rng, words: usize, vocabulary: usize) -> usize {
    let vocab: Vec<String> = (0..vocabulary)
        .map(|i| {
            let w = rng.word();
            if i % 2 == 0 {
                w.to_uppercase()
            } else {
                w
            }
        })
        .collect();
    let mut text = String::new();
    for _ in 0..words {
        text.push_str(&vocab[rng.below(vocabulary)]);
        text.push(' ');
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in text.split_whitespace() {
        *counts.entry(w.to_lowercase()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), words);
    let mut top: Vec<(&String, &usize)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    assert!(top.windows(2).all(|p| p[0].1 >= p[1].1));
    counts.len()
}

/// Inserts and removes string keys with byte values in an ordered map;
/// checks the survivors against a count kept on the side.
fn map_churn(rng: &mut Rng, steps: usize, keys: usize) -> usize {
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut live = vec![false; keys];
    let mut expected = 0usize;
    for _ in 0..steps {
        let k = rng.below(keys);
        let key = format!("key-{k:07}");
        if live[k] {
            let value = map.remove(&key).expect("a live key is in the map");
            assert_eq!(value.len(), 8 + k % 120);
            assert!(value.iter().all(|&b| b == k as u8));
            expected -= 1;
        } else {
            map.insert(key, vec![k as u8; 8 + k % 120]);
            expected += 1;
        }
        live[k] = !live[k];
    }
    assert_eq!(map.len(), expected);
    map.len()
}

/// Runs every stage, prints what each did and the time it took.
pub fn main(allocator: &str) {
    let start = Instant::now();
    let mut rng = Rng(2026);
    let bytes = json_round_trip(&mut rng, 60_000);
    let distinct = word_count(&mut rng, 1_500_000, 40_000);
    let survivors = map_churn(&mut rng, 1_000_000, 100_000);
    println!(
        "{allocator}: {bytes} bytes of JSON round-tripped, {distinct} distinct words, \
         {survivors} map entries left; {:.3} s",
        start.elapsed().as_secs_f64()
    );
}
