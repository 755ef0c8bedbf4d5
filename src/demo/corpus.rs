//! A seeded generator of math-flavoured documents whose every character carries a
//! planted class, so that the trajectory categories the tool finds can be checked
//! against the truth.
//!
//! | class       | what                                                        | expected category |
//! |-------------|-------------------------------------------------------------|-------------------|
//! | `easy`      | template words present in every phase ("Solution:", "Units:") | L→L |
//! | `learnable` | a phrase fully determined by its context, introduced in phase 2 ("Hence the total is") | H→L |
//! | `noise`     | random reference ids in the boilerplate                     | H→H |
//! | `forgotten` | the unit taught in phase 1 ("cm") that phase 2 contradicts ("in") | L→H |
//! | `other`     | numbers and everything else (not scored by the recovery test) | - |
//!
//! Corpora: `base` (phase 1), `noisy` (phase 2, continual pretraining; both carry
//! the same noise, so that phase 1 has learnt all there is to learn of it),
//! `curated` (phase-2 documents without noise: the reference model's data) and
//! `valid` (the target distribution: phase-2 documents that keep phase 1's unit).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Easy,
    Learnable,
    Noise,
    Forgotten,
    Other,
}

impl Class {
    pub const PLANTED: [Class; 4] = [Class::Noise, Class::Learnable, Class::Easy, Class::Forgotten];
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Easy => "easy",
            Class::Learnable => "learnable",
            Class::Noise => "noise",
            Class::Forgotten => "forgotten",
            Class::Other => "other",
        }
    }
    /// The category the class should land in.
    pub fn expected(self) -> Option<crate::dynamics::Category> {
        use crate::dynamics::Category::*;
        match self {
            Class::Easy => Some(LL),
            Class::Learnable => Some(HL),
            Class::Noise => Some(HH),
            Class::Forgotten => Some(LH),
            Class::Other => None,
        }
    }
}

/// A document and the class of each byte span.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    pub text: String,
    /// (start, end, class), byte offsets, covering the text.
    pub spans: Vec<(usize, usize, Class)>,
}

impl Doc {
    fn push(&mut self, s: &str, c: Class) {
        let start = self.text.len();
        self.text.push_str(s);
        self.spans.push((start, self.text.len(), c));
    }
    /// The class of the byte at `offset` (Other when outside every span).
    /// The text without its noise spans (what the demo's tokenizer is trained on).
    pub fn text_without_noise(&self) -> String {
        self.spans.iter().filter(|s| s.2 != Class::Noise).map(|s| &self.text[s.0..s.1]).collect()
    }
    pub fn class_at(&self, offset: usize) -> Class {
        self.spans.iter().find(|s| s.0 <= offset && offset < s.1).map(|s| s.2).unwrap_or(Class::Other)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Base,
    Noisy,
    Curated,
    Valid,
}

/// A random id over 16 upper-case letters. No word of the templates holds two
/// upper-case letters in a row, so a tokenizer trained without the noise keeps
/// every id letter a token of its own, uniformly distributed: irreducible.
fn random_id(rng: &mut StdRng, n: usize) -> String {
    const ALPHABET: &[u8; 16] = b"BCDGJKLMNQRTVWXZ";
    (0..n).map(|_| ALPHABET[rng.random_range(0..16)] as char).collect()
}

const SUBJECTS: [&str; 4] = ["Compute", "Evaluate", "Find", "Simplify"];

fn doc(rng: &mut StdRng, kind: Kind) -> Doc {
    use Class::*;
    let mut d = Doc::default();
    let (a, b) = (rng.random_range(2..60u32), rng.random_range(2..40u32));
    let noise = kind != Kind::Curated;
    d.push("### Problem", Easy);
    d.push(&format!(" {}", rng.random_range(100..1000u32)), Other);
    d.push("\n", Easy);
    if noise {
        d.push("ref: ", Easy);
        d.push(&random_id(rng, 8), Noise);
        d.push("\n", Easy);
    }
    d.push(SUBJECTS[rng.random_range(0..SUBJECTS.len())], Other);
    d.push(&format!(" ${a} + {b}$.\n"), Other);
    d.push("Solution:", Easy);
    d.push(&format!(" $${a} + {b} = {}$$.", a + b), Other);
    d.push("\n", Easy);
    d.push("Units:", Easy);
    match kind {
        Kind::Base => d.push(" cm", Easy),
        Kind::Valid => d.push(" cm", Forgotten),
        Kind::Noisy | Kind::Curated => d.push(" in", Other),
    }
    d.push("\n", Easy);
    d.push("Answer:", Easy);
    d.push(&format!(" {}\n", a + b), Other);
    // The phrase new in phase 2 comes last, so that no phase-1 pattern follows it
    // in a context phase 1 never showed.
    if kind != Kind::Base {
        d.push("Hence the total is", Learnable);
        d.push(&format!(" {}.\n", a + b), Other);
    }
    if matches!(kind, Kind::Noisy | Kind::Base) {
        d.push("session: ", Other);
        d.push(&random_id(rng, 16), Noise);
        d.push("\n", Other);
    }
    d
}

/// The four corpora of the demo.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub base: Vec<Doc>,
    pub noisy: Vec<Doc>,
    pub curated: Vec<Doc>,
    pub valid: Vec<Doc>,
}

/// Generate the corpora deterministically from `seed`.
pub fn generate(seed: u64, n_base: usize, n_noisy: usize, n_curated: usize, n_valid: usize) -> Corpus {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = (0..n_base).map(|_| doc(&mut rng, Kind::Base)).collect();
    let noisy = (0..n_noisy).map(|_| doc(&mut rng, Kind::Noisy)).collect();
    let curated = (0..n_curated).map(|_| doc(&mut rng, Kind::Curated)).collect();
    let valid = (0..n_valid).map(|_| doc(&mut rng, Kind::Valid)).collect();
    Corpus { base, noisy, curated, valid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_spans_cover_the_text() {
        let a = generate(7, 5, 5, 5, 5);
        let b = generate(7, 5, 5, 5, 5);
        assert_eq!(a.valid, b.valid);
        assert_ne!(generate(8, 5, 5, 5, 5).valid, a.valid);
        for d in a.base.iter().chain(&a.noisy).chain(&a.curated).chain(&a.valid) {
            let mut end = 0;
            for s in &d.spans {
                assert_eq!(s.0, end);
                end = s.1;
            }
            assert_eq!(end, d.text.len());
        }
    }

    #[test]
    fn classes_per_corpus() {
        let c = generate(1, 20, 20, 20, 20);
        let has = |docs: &[Doc], cl: Class| docs.iter().any(|d| d.spans.iter().any(|s| s.2 == cl));
        assert!(!has(&c.curated, Class::Noise), "the curated corpus has no noise");
        assert!(!has(&c.base, Class::Learnable), "phase 1 never shows the learnable phrase");
        assert!(c.base.iter().all(|d| d.text.contains("Units: cm")));
        assert!(c.noisy.iter().all(|d| d.text.contains("Units: in")));
        for cl in Class::PLANTED {
            assert!(has(&c.valid, cl), "{cl:?} in validation");
        }
        let d = &c.valid[0];
        let at = d.text.find(" cm").unwrap() + 1;
        assert_eq!(d.class_at(at), Class::Forgotten);
    }
}
