//! The one place text from elsewhere passes before it reaches a log line or an error.
//!
//! An error page that echoes the request (WAFs and proxies do) hands the `Authorization`
//! header back; a network error can quote a URL with a SAS signature in it; a platform
//! string can carry a newline and a forged log line, a terminal escape or a bidi
//! override. [`remote`] removes the secrets the process holds and the credential
//! patterns it knows, escapes control and format characters visibly and bounds the
//! length; the logger passes every message through [`scrub`] and [`escape`] as well.
//!
//! It sits at the bottom of the module tree: [`crate::env::Secret`] registers every
//! secret here when it is created (the configuration's when it is read, the tokens
//! fetched later when they arrive).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::RwLock;

/// What a removed secret or credential shows as.
pub const MASK: &str = "***";
/// Secrets shorter than this are not searched for: they would match ordinary words
/// (and a secret that short is guessed sooner than read from a log).
const MIN_SECRET_CHARS: usize = 8;
/// The first secrets registered (the configuration's) are kept for the process's life.
const KEPT: usize = 16;
/// Later ones (tokens fetched again and again) rotate out, oldest first, beyond this.
const RECENT: usize = 48;

/// `Bearer <token>`, `Basic <credentials>`, `sig=<signature>`, `AccountKey=<key>`: the
/// credential patterns removed wherever they appear, in any letter case.
const PATTERNS: [Pattern; 4] = [
    Pattern::scheme("bearer"),
    Pattern::scheme("basic"),
    Pattern::parameter("sig="),
    Pattern::parameter("accountkey="),
];

/// The secrets the process holds.
struct Registry {
    kept: Vec<String>,
    recent: VecDeque<String>,
    /// Both, longest first: a secret that contains another is removed whole.
    longest_first: Vec<String>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry::new());

impl Registry {
    const fn new() -> Registry {
        Registry {
            kept: Vec::new(),
            recent: VecDeque::new(),
            longest_first: Vec::new(),
        }
    }

    fn add(&mut self, secret: &str) {
        let mut secret = secret.trim();
        // An `Authorization` value: its credentials are the secret, the scheme stays
        // readable (`Bearer ***`).
        if let Some((scheme, rest)) = secret.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("basic") {
                secret = rest.trim();
            }
        }
        let mut values = vec![secret.to_string()];
        for part in secret.split(['&', ';', '?']) {
            if let Some((key, value)) = part.split_once('=') {
                if key.eq_ignore_ascii_case("sig") || key.eq_ignore_ascii_case("accountkey") {
                    values.push(value.to_string());
                    values.extend(crate::encoding::percent_decode(value));
                }
            }
        }
        let mut changed = false;
        for value in values {
            if value.chars().count() < MIN_SECRET_CHARS
                || self.kept.contains(&value)
                || self.recent.contains(&value)
            {
                continue;
            }
            if self.kept.len() < KEPT {
                self.kept.push(value);
            } else {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(value);
            }
            changed = true;
        }
        if changed {
            let mut all: Vec<String> = self.kept.iter().chain(&self.recent).cloned().collect();
            all.sort_by_key(|s| std::cmp::Reverse(s.len()));
            self.longest_first = all;
        }
    }

    fn remove_from<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.longest_first {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

/// Adds a secret the process holds: from now on it is removed from every text passed
/// through [`scrub`] or [`remote`]. A `Bearer`/`Basic` header value is searched for
/// without its scheme, and the `sig=` of a SAS and the `AccountKey=` of a connection
/// string also on their own (as sent and percent-decoded).
pub fn register(secret: &str) {
    if secret.trim().chars().count() >= MIN_SECRET_CHARS {
        REGISTRY
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(secret);
    }
}

/// `text` without the registered secrets and the credential patterns (each replaced
/// by `***`).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let out = REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .remove_from(text);
    match mask_patterns(&out) {
        Some(masked) => Cow::Owned(masked),
        None => out,
    }
}

/// `text` with every control character, Unicode format character (bidi controls,
/// zero-width characters, ...) and line or paragraph separator shown as an escape:
/// `\n`, `\r`, `\t`, `\u{1b}`, `\u{202e}`. The result is one line that reads as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Remote text (an error body, a network error, a platform value) fit for a log line
/// or an error message: [`scrub`]bed, trimmed, [`escape`]d, and cut to `max_chars`
/// characters (an ellipsis says it was cut). Secrets are removed before the cut, so
/// that no part of one survives at the end.
pub fn remote(text: &str, max_chars: usize) -> String {
    let scrubbed = scrub(text);
    let escaped = escape(scrubbed.trim());
    match escaped.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &escaped[..end]),
        None => escaped.into_owned(),
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_format(c) || c == '\u{2028}' || c == '\u{2029}'
}

/// Whether `c` is of Unicode general category Cf (format) as of Unicode 15: soft
/// hyphen, bidi controls and isolates, zero-width space and joiners, word joiner,
/// invisible operators, byte order mark, interlinear annotations, tags, and the
/// script-specific format controls. They change how text looks without showing.
pub fn is_format(c: char) -> bool {
    (c as u32) >= 0xAD
        && matches!(c,
            '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{890}'..='\u{891}'
            | '\u{8E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

/// A credential pattern: a keyword (ASCII, lower case) at the start of a word and the
/// value after it, which is replaced.
struct Pattern {
    keyword: &'static str,
    /// An authorization scheme: blanks separate the keyword from the value.
    scheme: bool,
}

impl Pattern {
    const fn scheme(keyword: &'static str) -> Pattern {
        Pattern {
            keyword,
            scheme: true,
        }
    }

    const fn parameter(keyword: &'static str) -> Pattern {
        Pattern {
            keyword,
            scheme: false,
        }
    }

    /// The byte range of the value when the pattern starts at `at`.
    fn value_at(&self, bytes: &[u8], at: usize) -> Option<(usize, usize)> {
        let word_start = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let keyword = self.keyword.as_bytes();
        let end = at + keyword.len();
        if !word_start || end > bytes.len() || !bytes[at..end].eq_ignore_ascii_case(keyword) {
            return None;
        }
        let mut start = end;
        if self.scheme {
            while start < bytes.len() && matches!(bytes[start], b' ' | b'\t') {
                start += 1;
            }
            if start == end {
                return None;
            }
        }
        let mut stop = start;
        while stop < bytes.len() && !ends_value(bytes[stop]) {
            stop += 1;
        }
        (stop > start).then_some((start, stop))
    }
}

/// The bytes that end a credential value (all ASCII, so a value ends on a char boundary).
fn ends_value(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>' | b',' | b';' | b'&' | b')')
}

fn mask_patterns(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        match PATTERNS.iter().find_map(|p| p.value_at(bytes, at)) {
            Some((start, stop)) => {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                out.push_str(&text[copied..start]);
                out.push_str(MASK);
                copied = stop;
                at = stop;
            }
            None => at += 1,
        }
    }
    out.map(|mut out| {
        out.push_str(&text[copied..]);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_patterns_are_masked_in_any_case() {
        let cases = [
            (
                "you sent authorization: Bearer eyJ.abc-_~+/= ; host: x",
                "you sent authorization: Bearer *** ; host: x",
            ),
            ("BEARER\ttok123;next", "BEARER\t***;next"),
            (
                "Authorization: Basic dXNlcjpwYXNz",
                "Authorization: Basic ***",
            ),
            (
                "GET /c/b?sv=2021&SIG=abc%2Bdef&se=1 HTTP/1.1",
                "GET /c/b?sv=2021&SIG=***&se=1 HTTP/1.1",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountKey=U3Vw/ZXI+==;AccountName=a",
                "DefaultEndpointsProtocol=https;AccountKey=***;AccountName=a",
            ),
            (
                "<Message>Bearer x</Message>",
                "<Message>Bearer ***</Message>",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(scrub(text), want, "{text}");
        }
        for untouched in [
            "Basically fine",
            "a bearer",
            "sig=",
            "design=x",
            "Bearerx y",
            "žluťoučký kůň",
        ] {
            assert_eq!(scrub(untouched), untouched);
        }
    }

    #[test]
    fn registered_secrets_are_removed_wherever_they_appear() {
        let mut registry = Registry::new();
        registry.add("registry-api-token-41x");
        registry.add("Bearer registry-bearer-token-42y");
        registry.add("sv=2022-11-02&ss=b&sig=Registry%2BSig%3D43z");
        registry.add("AccountName=a;AccountKey=UmVnaXN0cnlLZXk0NHc=");
        registry.add("short");
        let text = "token=registry-api-token-41x, access_token=registry-bearer-token-42y, \
                    %sig%=Registry%2BSig%3D43z or Registry+Sig=43z, key UmVnaXN0cnlLZXk0NHc=, short";
        let out = registry.remove_from(text);
        for secret in [
            "registry-api-token-41x",
            "registry-bearer-token-42y",
            "Registry%2BSig%3D43z",
            "Registry+Sig=43z",
            "UmVnaXN0cnlLZXk0NHc=",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.ends_with(", short"),
            "short values are not searched for: {out}"
        );
    }

    #[test]
    fn a_secret_containing_another_is_removed_whole() {
        let mut registry = Registry::new();
        registry.add("nested-secret");
        registry.add("nested-secret-and-more");
        assert_eq!(
            registry.remove_from("x nested-secret-and-more y"),
            "x *** y"
        );
    }

    #[test]
    fn the_registry_keeps_the_first_secrets_and_rotates_the_rest() {
        let mut registry = Registry::new();
        let total = KEPT + 2 * RECENT;
        for i in 0..total {
            registry.add(&format!("rotated-token-{i:04}"));
        }
        assert_eq!(registry.longest_first.len(), KEPT + RECENT);
        let gone = format!("rotated-token-{:04}", KEPT);
        let kept = "rotated-token-0000";
        let newest = format!("rotated-token-{:04}", total - 1);
        assert_eq!(registry.remove_from(kept), MASK, "the configuration's stay");
        assert_eq!(registry.remove_from(&newest), MASK);
        assert_eq!(
            registry.remove_from(&gone),
            gone,
            "the oldest fetched rotate out"
        );
        registry.add(&newest);
        assert_eq!(registry.longest_first.len(), KEPT + RECENT, "no duplicates");
    }

    #[test]
    fn control_and_format_characters_are_escaped_visibly() {
        assert_eq!(
            escape("id\n2024 ERROR forged\x1b[31m\u{202e}gnp.exe\u{200b}\t\r\u{2028}"),
            "id\\n2024 ERROR forged\\u{1b}[31m\\u{202e}gnp.exe\\u{200b}\\t\\r\\u{2028}"
        );
        assert!(matches!(escape("plain žluťoučký 😀"), Cow::Borrowed(_)));
    }

    #[test]
    fn remote_text_is_scrubbed_before_it_is_cut() {
        let body = format!("{} Bearer abcdefghijklmnop", "x".repeat(195));
        let out = remote(&body, 200);
        assert!(!out.contains("abc"), "{out}");
        assert_eq!(remote("  short body \n", 200), "short body");
        let long = remote(&"é".repeat(500), 10);
        assert_eq!(long, format!("{}…", "é".repeat(10)));
    }

    #[test]
    fn format_characters_are_the_unicode_15_cf_list() {
        for c in [
            '\u{AD}',
            '\u{600}',
            '\u{61C}',
            '\u{180E}',
            '\u{200B}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{206F}',
            '\u{FEFF}',
            '\u{FFFB}',
            '\u{110BD}',
            '\u{1343F}',
            '\u{1BCA3}',
            '\u{1D17A}',
            '\u{E0001}',
            '\u{E007F}',
        ] {
            assert!(is_format(c), "{:x}", c as u32);
        }
        for c in [
            'a', ' ', '\u{AC}', '\u{200A}', '\u{2010}', '\u{2065}', 'ž', '\u{FFFC}',
        ] {
            assert!(!is_format(c), "{:x}", c as u32);
        }
    }
}
