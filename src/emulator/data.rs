//! The emulated account: tasks and every file they serve, all derived from one seed.
//!
//! Tests, the benchmark and the demo must see the same account on every run, and a
//! test must be able to check a downloaded file byte for byte without the emulator
//! keeping it: so every task is generated from `mix(seed, index)`, and a recording's
//! bytes are regenerated block by block (64 KiB at a time) whenever they are needed.

use std::collections::HashMap;
use std::io::{self, Read};

use serde_json::{json, Value};

/// Size of one generated block of recording bytes.
pub const BLOCK: usize = 64 * 1024;

/// SplitMix64: small, fast, and good enough for test data and fault draws.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (never for p <= 0, always for p >= 1).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.f64() < p)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// Derives an independent seed from a seed and a number.
pub fn mix(seed: u64, n: u64) -> u64 {
    Rng::new(seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// A type-1 (time-based) UUID with random fields.
fn uuid1(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-1{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// The skills tasks may carry (1–4 character ids).
pub const SKILLS: [&str; 4] = ["SK1", "SK2", "SK3", "VIP"];
/// The hashtag types tasks may carry (type-1 UUIDs).
pub const HASHTAGS: [&str; 3] = [
    "1d4de98c-c130-11ef-9cd2-0242ac120002",
    "2f1a7c3e-c130-11ef-9cd2-0242ac120002",
    "3b9e0d52-c130-11ef-9cd2-0242ac120002",
];
const HASHTAG_VALUES: [Option<&str>; 4] = [None, Some("value1"), Some("value2"), Some("value3")];
const AGENTS: [&str; 6] = [
    "Jana Nováková",
    "Petr Svoboda",
    "Eva Dvořáková",
    "Tomáš Černý",
    "Lucie Veselá",
    "Martin Horák",
];
const PHRASES: [&str; 8] = [
    "Dobrý den, jak vám mohu pomoci?",
    "Volám kvůli své poslední faktuře.",
    "Rozumím, hned se na to podívám.",
    "Můžete mi prosím sdělit číslo smlouvy?",
    "Děkuji, změnu jsem provedl.",
    "Je ještě něco, s čím mohu pomoci?",
    "Ne, to je vše, děkuji.",
    "Hezký den, na slyšenou.",
];

/// What a task is; decides its metadata type and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call,
    Chat,
    Sms,
    Email,
    Workflow,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Chat => "chat",
            Kind::Sms => "sms",
            Kind::Email => "email",
            Kind::Workflow => "workflow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recording {
    pub id: String,
    pub size: u64,
    pub transcribed: bool,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub due: i64,
    pub kind: Kind,
    pub call_from: Option<String>,
    pub call_to: Option<String>,
    pub skills: Vec<String>,
    /// `(uuid, value)`.
    pub hashtags: Vec<(String, Option<String>)>,
    pub recordings: Vec<Recording>,
    /// Sent with only the always-there fields, as older platform versions do.
    pub old_platform: bool,
    pub seed: u64,
}

/// The parameters the account is generated from.
#[derive(Debug, Clone, Copy)]
pub struct AccountSpec {
    pub seed: u64,
    pub start_due_ms: i64,
    pub recording_size: (u64, u64),
    pub old_platform: f64,
    /// Every task is a call.
    pub calls_only: bool,
    /// Each call has exactly this many recordings instead of 0–3.
    pub recordings_per_call: Option<usize>,
}

/// Every generated task, in due-date order.
#[derive(Debug)]
pub struct Account {
    spec: AccountSpec,
    pub tasks: Vec<Task>,
    by_id: HashMap<String, usize>,
}

fn phone(rng: &mut Rng) -> String {
    let prefix = *rng.pick(&["420", "420", "420", "421", "49", "44"]);
    format!("{prefix}{}", rng.range(600_000_000, 799_999_999))
}

impl Account {
    pub fn new(spec: AccountSpec, tasks: usize) -> Account {
        let mut account = Account {
            spec,
            tasks: Vec::new(),
            by_id: HashMap::new(),
        };
        account.add(tasks);
        account
    }

    /// Generates `n` more tasks, due after the last one.
    pub fn add(&mut self, n: usize) {
        for _ in 0..n {
            let index = self.tasks.len() as u64;
            let seed = mix(self.spec.seed, index);
            let mut rng = Rng::new(seed);
            let gap = rng.range(60_000, 1_200_000) as i64;
            let due = match self.tasks.last() {
                Some(last) => last.due + gap,
                None => self.spec.start_due_ms,
            };
            let task = self.generate(seed, &mut rng, due);
            self.by_id.insert(task.id.clone(), self.tasks.len());
            self.tasks.push(task);
        }
    }

    fn generate(&self, seed: u64, rng: &mut Rng, due: i64) -> Task {
        let id = uuid1(rng);
        let roll = rng.f64();
        let kind = match roll {
            r if r < 0.70 => Kind::Call,
            r if r < 0.80 => Kind::Chat,
            r if r < 0.88 => Kind::Sms,
            r if r < 0.95 => Kind::Email,
            _ => Kind::Workflow,
        };
        let kind = if self.spec.calls_only {
            Kind::Call
        } else {
            kind
        };
        let mut skills: Vec<String> = Vec::new();
        for _ in 0..rng.range(0, 2) {
            let s = rng.pick(&SKILLS).to_string();
            if !skills.contains(&s) {
                skills.push(s);
            }
        }
        let mut hashtags: Vec<(String, Option<String>)> = Vec::new();
        for _ in 0..rng.range(0, 2) {
            let uuid = rng.pick(&HASHTAGS).to_string();
            let value = rng.pick(&HASHTAG_VALUES).map(str::to_string);
            if !hashtags.iter().any(|(u, _)| *u == uuid) {
                hashtags.push((uuid, value));
            }
        }
        let (mut call_from, mut call_to, mut recordings) = (None, None, Vec::new());
        if kind == Kind::Call {
            call_from = Some(phone(rng));
            call_to = Some(phone(rng));
            let count = match rng.f64() {
                r if r < 0.10 => 0,
                r if r < 0.70 => 1,
                r if r < 0.90 => 2,
                _ => 3,
            };
            let count = self.spec.recordings_per_call.map_or(count, |n| n as u64);
            for k in 0..count {
                let (lo, hi) = self.spec.recording_size;
                recordings.push(Recording {
                    id: uuid1(rng),
                    size: rng.range(lo, hi.max(lo)),
                    transcribed: rng.chance(0.5),
                    seed: mix(seed, 1000 + k),
                });
            }
        }
        let old_platform = rng.chance(self.spec.old_platform);
        Task {
            id,
            due,
            kind,
            call_from,
            call_to,
            skills,
            hashtags,
            recordings,
            old_platform,
            seed,
        }
    }

    pub fn find(&self, id: &str) -> Option<&Task> {
        self.by_id.get(id).map(|&i| &self.tasks[i])
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}

impl Task {
    pub fn recording(&self, id: &str) -> Option<&Recording> {
        self.recordings.iter().find(|r| r.id == id)
    }

    fn agent(&self) -> &'static str {
        AGENTS[Rng::new(self.seed ^ 0xA6E7).range(0, AGENTS.len() as u64 - 1) as usize]
    }

    /// The task's metadata document (`/task/{id}/meta`).
    pub fn metadata(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed ^ 0x3E7A);
        let hashtags: Vec<Value> = self
            .hashtags
            .iter()
            .map(|(u, v)| json!({"hashTagId": u, "value": v}))
            .collect();
        let mut doc = json!({
            "taskId": self.id,
            "type": self.kind.name(),
            "dueDate": self.due,
            "created": self.due - rng.range(1_000, 600_000) as i64,
            "assignee": {"name": self.agent(), "userId": format!("u{}", rng.range(1000, 9999))},
            "skills": self.skills,
            "hashTags": hashtags,
        });
        let extra = match self.kind {
            Kind::Call => json!({
                "callFrom": self.call_from,
                "callTo": self.call_to,
                "direction": if rng.chance(0.6) { "inbound" } else { "outbound" },
                "durationSec": rng.range(5, 1800),
                "recordings": self.recordings.iter().map(|r| json!({
                    "recordingId": r.id, "sizeBytes": r.size, "transcribed": r.transcribed
                })).collect::<Vec<_>>(),
            }),
            Kind::Chat => {
                json!({"channel": "web", "customer": format!("visitor-{}", rng.range(1, 99_999))})
            }
            Kind::Sms => {
                json!({"from": phone(&mut rng), "to": phone(&mut rng), "text": *rng.pick(&PHRASES)})
            }
            Kind::Email => json!({
                "from": format!("customer{}@example.com", rng.range(1, 999)),
                "to": "support@example.com",
                "subject": *rng.pick(&PHRASES),
            }),
            Kind::Workflow => {
                json!({"workflow": "Callback", "state": *rng.pick(&["open", "done", "cancelled"])})
            }
        };
        if let (Value::Object(doc), Value::Object(extra)) = (&mut doc, extra) {
            doc.extend(extra);
        }
        serde_json::to_vec_pretty(&doc).unwrap_or_default()
    }

    /// The chat history document (`/task/{id}/history`), chats only.
    pub fn history(&self) -> Option<Vec<u8>> {
        if self.kind != Kind::Chat {
            return None;
        }
        let mut rng = Rng::new(self.seed ^ 0x415);
        let mut at = self.due;
        let messages: Vec<Value> = (0..rng.range(2, 8))
            .map(|i| {
                at += rng.range(2_000, 90_000) as i64;
                let from = if i % 2 == 0 { "customer" } else { "agent" };
                json!({"from": from, "sentAt": at, "text": *rng.pick(&PHRASES)})
            })
            .collect();
        let doc = json!({"taskId": self.id, "agent": self.agent(), "messages": messages});
        Some(serde_json::to_vec_pretty(&doc).unwrap_or_default())
    }

    /// A recording's transcription (`/task/transcription/{id}/{rec}`), when it has one.
    pub fn transcription(&self, rec: &Recording) -> Option<Vec<u8>> {
        if !rec.transcribed {
            return None;
        }
        let mut rng = Rng::new(rec.seed ^ 0x7A5);
        let mut at = 0;
        let segments: Vec<Value> = (0..rng.range(3, 10))
            .map(|i| {
                let start = at;
                at += rng.range(1_500, 12_000);
                let speaker = if i % 2 == 0 { "agent" } else { "customer" };
                json!({"speaker": speaker, "startMs": start, "endMs": at, "text": *rng.pick(&PHRASES)})
            })
            .collect();
        let doc = json!({"taskId": self.id, "recordingId": rec.id, "language": "cs-CZ", "segments": segments});
        Some(serde_json::to_vec_pretty(&doc).unwrap_or_default())
    }
}

/// Streams a recording's bytes, generating one 64 KiB block at a time.
pub struct RecordingReader {
    seed: u64,
    len: u64,
    pos: u64,
    block: Vec<u8>,
    block_no: u64,
}

impl RecordingReader {
    pub fn new(rec: &Recording) -> RecordingReader {
        RecordingReader {
            seed: rec.seed,
            len: rec.size,
            pos: 0,
            block: vec![0; BLOCK],
            block_no: u64::MAX,
        }
    }
}

impl Read for RecordingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let no = self.pos / BLOCK as u64;
        if no != self.block_no {
            let mut rng = Rng::new(mix(self.seed, no));
            for word in self.block.chunks_mut(8) {
                word.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            if no == 0 {
                self.block[..4].copy_from_slice(b"OggS");
            }
            self.block_no = no;
        }
        let offset = (self.pos % BLOCK as u64) as usize;
        let n = buf
            .len()
            .min(BLOCK - offset)
            .min((self.len - self.pos) as usize);
        buf[..n].copy_from_slice(&self.block[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A recording's whole content (for verification; the server streams instead).
pub fn recording_bytes(rec: &Recording) -> Vec<u8> {
    let mut out = Vec::with_capacity(rec.size as usize);
    // Reading from a generator cannot fail.
    let _ = RecordingReader::new(rec).read_to_end(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AccountSpec {
        AccountSpec {
            seed: 7,
            start_due_ms: 1_725_896_747_277,
            recording_size: (1000, 200_000),
            old_platform: 0.0,
            calls_only: false,
            recordings_per_call: None,
        }
    }

    #[test]
    fn same_seed_same_account_and_extension_is_stable() {
        let a = Account::new(spec(), 50);
        let mut b = Account::new(spec(), 20);
        b.add(30);
        for (x, y) in a.tasks.iter().zip(&b.tasks) {
            assert_eq!(
                (&x.id, x.due, x.recordings.len()),
                (&y.id, y.due, y.recordings.len())
            );
            assert_eq!(x.metadata(), y.metadata());
        }
        assert!(a.tasks.windows(2).all(|w| w[0].due < w[1].due));
        assert_eq!(a.tasks[0].due, 1_725_896_747_277);
    }

    #[test]
    fn calls_only_with_fixed_recordings() {
        let a = Account::new(
            AccountSpec {
                calls_only: true,
                recordings_per_call: Some(2),
                ..spec()
            },
            40,
        );
        assert!(a
            .tasks
            .iter()
            .all(|t| t.kind == Kind::Call && t.recordings.len() == 2));
        let mixed = Account::new(spec(), 40);
        assert!(mixed.tasks.iter().any(|t| t.kind != Kind::Call));
        assert!(mixed.tasks.iter().any(|t| t.recordings.len() != 2));
    }

    #[test]
    fn recording_stream_is_exact_and_repeatable() {
        let rec = Recording {
            id: "r".into(),
            size: 3 * BLOCK as u64 + 17,
            transcribed: false,
            seed: 99,
        };
        let whole = recording_bytes(&rec);
        assert_eq!(whole.len() as u64, rec.size);
        assert_eq!(&whole[..4], b"OggS");
        let mut small = Vec::new();
        let mut reader = RecordingReader::new(&rec);
        let mut buf = [0u8; 1000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            small.extend_from_slice(&buf[..n]);
        }
        assert_eq!(small, whole);
    }
}
