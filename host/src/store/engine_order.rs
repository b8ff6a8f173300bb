//! The storage engine (vendored sled) keeps every key in order whatever the pattern of
//! writes: its leaves split near the end when keys are appended in order (PATCHED.md), and
//! this checks that against a model for the patterns the store writes (time-ordered ids,
//! runs appended per prefix, removals from the front as pruning does) and a few others,
//! before and after a reopen.

use std::collections::BTreeMap;

/// A small deterministic generator, so a failure repeats.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// One write pattern: keys as the store would write them.
fn patterns() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let n = 5_000u64;
    let mut rng = Lcg(7);
    let appended: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
    let descending: Vec<Vec<u8>> = (0..n).rev().map(|i| i.to_be_bytes().to_vec()).collect();
    let random: Vec<Vec<u8>> = (0..n).map(|_| rng.next().to_be_bytes().to_vec()).collect();
    // Runs appended in order under eight prefixes at once, as the `finished` index is.
    let runs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut key = format!("webhook-{}\0", rng.next() % 8).into_bytes();
            key.extend_from_slice(&i.to_be_bytes());
            key
        })
        .collect();
    // Appends whose keys grow in length, so leaves' prefixes change as they split.
    let lengths: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut key = vec![b'k'; 1 + (i / 700) as usize];
            key.extend_from_slice(&i.to_be_bytes());
            key
        })
        .collect();
    vec![
        ("appended", appended),
        ("descending", descending),
        ("random", random),
        ("runs", runs),
        ("lengths", lengths),
    ]
}

fn check(tree: &sled::Tree, model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    let stored: Vec<(Vec<u8>, Vec<u8>)> = tree
        .iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("reading"))
        .collect();
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(stored.len(), expected.len(), "{what}: how many keys");
    assert!(
        stored == expected,
        "{what}: the keys in order, with their values"
    );
    let reversed: Vec<Vec<u8>> = tree
        .iter()
        .rev()
        .map(|kv| kv.expect("reading").0.to_vec())
        .collect();
    assert!(
        reversed.iter().eq(model.keys().rev()),
        "{what}: the keys walked backwards"
    );
    for (key, value) in model.iter().step_by(97) {
        assert_eq!(
            tree.get(key).expect("reading").as_deref(),
            Some(value.as_slice()),
            "{what}: a get"
        );
    }
}

#[test]
fn every_write_pattern_reads_back_in_order_after_splits_removals_and_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut models = Vec::new();
    {
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("opening");
        for (name, keys) in patterns() {
            let tree = db.open_tree(name).expect("tree");
            let mut model = BTreeMap::new();
            for (i, key) in keys.iter().enumerate() {
                let value = (i as u64).to_le_bytes().to_vec();
                tree.insert(key.as_slice(), value.as_slice())
                    .expect("insert");
                model.insert(key.clone(), value);
                // Prune from the front now and then, as retention does, so leaves also merge.
                if i % 1_000 == 999 {
                    let front: Vec<Vec<u8>> = model.keys().take(400).cloned().collect();
                    for key in front {
                        tree.remove(key.as_slice()).expect("remove");
                        model.remove(&key);
                    }
                }
            }
            check(&tree, &model, name);
            models.push((name, model));
        }
        db.flush().expect("flush");
    }
    let db = sled::Config::new()
        .path(dir.path())
        .open()
        .expect("reopening");
    for (name, model) in &models {
        check(
            &db.open_tree(name).expect("tree"),
            model,
            &format!("{name} after a reopen"),
        );
    }
}
