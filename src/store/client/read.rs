//! Reading an archive back through the REST layer (`verify`): what S3, GCS and Azure
//! share. A listing comes in pages joined by a token the store hands out; an object is
//! read one range at a time, each range one request of at most [`RANGE`] bytes sent
//! (and retried) like every other request, so memory stays at one range whatever the
//! object's size, and a range that breaks is asked again on its own.

use std::collections::HashSet;
use std::io::{self, Read};

use super::{Answer, Client, Protocol, Request};
use crate::store::{StoreError, StoreErrorKind};

/// The bytes one range request asks for.
pub const RANGE: u64 = 4 << 20;
/// The names one listing request asks for (the most S3 and GCS give; Azure would give
/// 5,000).
pub const LIST_PAGE: usize = 1000;

/// One page of a listing: the names on it, and the token of the next page, if any.
#[derive(Debug, Default, PartialEq)]
pub struct ListPage {
    pub names: Vec<String>,
    pub next: Option<String>,
}

/// Follows a listing from its first page to its last, `page(token)` fetching each.
/// A token handed out twice would loop forever: the listing ends with an error.
pub fn all_pages(
    what: &str,
    mut page: impl FnMut(Option<&str>) -> Result<ListPage, StoreError>,
) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let ListPage { names: more, next } = page(token.as_deref())?;
        names.extend(more);
        match next.filter(|t| !t.is_empty()) {
            None => return Ok(names),
            Some(t) if !seen.insert(t.clone()) => {
                return Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!(
                        "{what}: the storage handed out the same continuation token twice ({}), \
                         so the listing would never end",
                        super::clip(&t, 100)
                    ),
                ))
            }
            Some(t) => token = Some(t),
        }
    }
}

/// A listing page the store answered but that cannot be read.
pub fn unreadable_page(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Rejected, format!("{what}: {e}"))
}

/// The names of a listing relative to the store's own prefix (as the keys are), only
/// those under `prefix`: the store's answer is not taken for what was asked.
pub fn relative_names(names: Vec<String>, store_prefix: &str, prefix: &str) -> Vec<String> {
    let root = crate::store::prefixed(store_prefix, "");
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix(&root).map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The texts of every `<tag>` element of an XML document, entities decoded (S3's
/// `<Key>`, Azure's `<Name>`); an element with attributes counts too, and its
/// attributes are handed over beside its text; `<tag />` is empty.
pub fn xml_elements<'a>(body: &'a str, tag: &'a str) -> impl Iterator<Item = XmlElement> + 'a {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = body;
    std::iter::from_fn(move || loop {
        let at = rest.find(&open)?;
        let after = &rest[at + open.len()..];
        // `<Key>` or `<Name Encoded="true">`, not `<KeyCount>`.
        let Some(end_of_open) = after.find('>') else {
            rest = "";
            return None;
        };
        let attributes = &after[..end_of_open];
        if !(attributes.is_empty() || attributes.starts_with(char::is_whitespace)) {
            rest = after;
            continue;
        }
        let text_start = &after[end_of_open + 1..];
        if let Some(attributes) = attributes.strip_suffix('/') {
            // `<NextMarker />`: empty.
            rest = text_start;
            return Some(XmlElement {
                attributes: attributes.trim().to_string(),
                text: String::new(),
            });
        }
        let Some(text_end) = text_start.find(&close) else {
            rest = "";
            return None;
        };
        rest = &text_start[text_end + close.len()..];
        return Some(XmlElement {
            attributes: attributes.trim().to_string(),
            text: xml_unescape(&text_start[..text_end]),
        });
    })
}

/// One element found by [`xml_elements`].
#[derive(Debug, PartialEq)]
pub struct XmlElement {
    /// `Encoded="true"`, or "".
    pub attributes: String,
    pub text: String,
}

/// Decodes XML's five entities and character references (`&#38;`, `&#x26;`); an
/// entity it does not know is kept as it is.
pub fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').and_then(|end| {
            let c = match &rest[1..end] {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                e => {
                    let code = match e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => e.strip_prefix('#').and_then(|d| d.parse().ok()),
                    };
                    char::from_u32(code?)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The object a ranged read is of, as it was when the read began.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinned {
    pub size: u64,
    /// The header that names the object's version in every answer (`etag`,
    /// `x-goog-generation`) and its value then. An answer of another version is refused
    /// even from a server that ignores the condition the request carries (s3s-fs and
    /// fake-gcs-server do).
    pub version: Option<(&'static str, String)>,
}

/// An object read one range at a time: `request(range)` builds the GET of one range
/// (its URL, and its condition: the version the read began with, so a replaced object
/// is not read half old, half new), `range` being the `Range` header's value. Each
/// range's answer must be that range of that version, byte for byte in number.
pub struct RangedReader<'a> {
    client: &'a Client,
    proto: &'a dyn Protocol,
    what: String,
    request: Box<dyn Fn(&str) -> Request<'static> + 'a>,
    pinned: Pinned,
    /// The next byte to ask for.
    offset: u64,
    chunk: Vec<u8>,
    /// The next byte of `chunk` to hand out.
    pos: usize,
}

impl<'a> RangedReader<'a> {
    pub fn new(
        client: &'a Client,
        proto: &'a dyn Protocol,
        what: String,
        pinned: Pinned,
        request: impl Fn(&str) -> Request<'static> + 'a,
    ) -> RangedReader<'a> {
        RangedReader {
            client,
            proto,
            what,
            request: Box::new(request),
            pinned,
            offset: 0,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    /// The bytes `start..end` of the object. A broken answer (short, another range) is
    /// asked again within the budget like a broken body; an object replaced or removed
    /// since its size was read is final.
    fn fetch(&self, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let range = format!("bytes={start}-{}", end - 1);
        let what = format!("{} (bytes {start}-{})", self.what, end - 1);
        let answer = self.client.send_verified(
            self.proto,
            &what,
            || Ok((self.request)(&range)),
            |a| match judge(a, start, end, &self.pinned) {
                RangeAnswer::Broken(why) => Err(StoreError::transient(format!("{what}: {why}"))),
                RangeAnswer::Changed(why) => Err(StoreError::new(
                    StoreErrorKind::Rejected,
                    format!("{what}: {why}"),
                )),
                RangeAnswer::Range | RangeAnswer::Unexpected => Ok(()),
            },
        )?;
        match judge(&answer, start, end, &self.pinned) {
            RangeAnswer::Range => Ok(answer.body),
            _ => Err(self.client.unexpected(self.proto, &what, &answer)),
        }
    }
}

/// What the answer to a range request is.
#[derive(Debug, PartialEq)]
enum RangeAnswer {
    /// The range asked for, as many bytes as asked for: a 206 of exactly that range,
    /// or a 200 of the whole object when the range is all of it.
    Range,
    /// Short, or another range: broken on the way.
    Broken(String),
    /// A 412, 404 or another version: the object was replaced or removed since its
    /// size was read.
    Changed(&'static str),
    /// Not an answer to a range: the caller's to report.
    Unexpected,
}

fn judge(answer: &Answer, start: u64, end: u64, pinned: &Pinned) -> RangeAnswer {
    let len = answer.body.len() as u64;
    let size = pinned.size;
    let replaced = pinned
        .version
        .as_ref()
        .is_some_and(|(header, then)| answer.header(header).is_some_and(|now| now != then));
    let content_range = answer.header("content-range").unwrap_or_default();
    let whole = answer.status == 200 && start == 0 && end == size;
    let ranged = answer.status == 206
        && content_range
            .trim()
            .starts_with(&format!("bytes {start}-{}/", end - 1));
    match answer.status {
        200 | 206 if replaced => RangeAnswer::Changed("the object was replaced while it was read"),
        200 | 206 if (whole || ranged) && len == end - start => RangeAnswer::Range,
        200 | 206 if whole || ranged => RangeAnswer::Broken(format!(
            "the answer holds {len} bytes, not the {} asked for",
            end - start
        )),
        200 | 206 => RangeAnswer::Broken(format!(
            "the answer is not the range asked for (HTTP {}, Content-Range {:?})",
            answer.status,
            super::clip(content_range, 100)
        )),
        412 => RangeAnswer::Changed("the object was replaced while it was read"),
        404 => RangeAnswer::Changed("the object was removed while it was read"),
        _ => RangeAnswer::Unexpected,
    }
}

impl Read for RangedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            if self.offset >= self.pinned.size || buf.is_empty() {
                return Ok(0);
            }
            let end = (self.offset + RANGE).min(self.pinned.size);
            // The range handed out is let go first: one range in memory, not two.
            self.chunk = Vec::new();
            self.chunk = self.fetch(self.offset, end).map_err(io::Error::other)?;
            self.pos = 0;
            self.offset = end;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::{HeaderMap, HeaderValue};

    /// Names outside the store's prefix or the asked folder are dropped, whatever the
    /// store answered.
    #[test]
    fn a_listing_keeps_only_names_under_what_was_asked() {
        let answered = [
            "archive/m/a.jsonl",
            "archive/m/b/c.jsonl",
            "archive/x",
            "elsewhere/m/d",
        ];
        let names = answered.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            relative_names(names, "/archive/", "m/"),
            ["m/a.jsonl", "m/b/c.jsonl"]
        );
        let names = answered.iter().map(|n| n.to_string()).collect();
        assert_eq!(relative_names(names, "", "elsewhere/").len(), 1);
    }

    #[test]
    fn a_listing_follows_its_tokens_to_the_last_page() {
        let pages = [("", "t1"), ("a b", "t2"), ("c", "")];
        let mut asked = Vec::new();
        let names = all_pages("list", |token| {
            asked.push(token.map(str::to_string));
            let (names, next) = pages[asked.len() - 1];
            Ok(ListPage {
                names: names
                    .split(' ')
                    .filter(|n| !n.is_empty())
                    .map(Into::into)
                    .collect(),
                next: Some(next.to_string()),
            })
        })
        .unwrap();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(asked, [None, Some("t1".into()), Some("t2".into())]);
    }

    #[test]
    fn a_token_handed_out_twice_ends_the_listing() {
        let mut n = 0;
        let err = all_pages("S3 list of s3://b/p/", |_| {
            n += 1;
            Ok(ListPage {
                names: vec![format!("k{n}")],
                next: Some(if n == 1 { "x" } else { "y" }.into()),
            })
        })
        .unwrap_err();
        assert_eq!(n, 3, "pages asked for: x, y, then y again");
        assert!(
            err.message.contains("same continuation token twice"),
            "{err}"
        );
    }

    #[test]
    fn xml_elements_and_entities() {
        let body = r#"<R><KeyCount>2</KeyCount><Key>a &amp; b&lt;&#x41;&#66;&bogus;</Key>
            <Name Encoded="true">c%2Fd</Name><Key></Key></R>"#;
        let keys: Vec<_> = xml_elements(body, "Key").map(|e| e.text).collect();
        assert_eq!(keys, ["a & b<AB&bogus;", ""]);
        let names: Vec<_> = xml_elements(body, "Name").collect();
        assert_eq!(
            names,
            [XmlElement {
                attributes: "Encoded=\"true\"".into(),
                text: "c%2Fd".into()
            }]
        );
        assert_eq!(xml_elements("<Key>cut", "Key").count(), 0);
        let markers: Vec<_> = xml_elements("<NextMarker /><Key>k</Key></NextMarker>", "NextMarker")
            .map(|e| e.text)
            .collect();
        assert_eq!(markers, [""]);
    }

    fn answer(status: u16, range: Option<&str>, body: &[u8]) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(r) = range {
            headers.insert("content-range", HeaderValue::from_str(r).unwrap());
        }
        Answer {
            status,
            headers,
            code: String::new(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_range_answer_must_be_the_range_asked_for() {
        let pinned = Pinned {
            size: 10,
            version: None,
        };
        let judged = |a: Answer| judge(&a, 4, 8, &pinned);
        assert_eq!(
            judged(answer(206, Some("bytes 4-7/10"), b"4567")),
            RangeAnswer::Range
        );
        // Short, another range, the whole object when a part was asked for.
        for broken in [
            answer(206, Some("bytes 4-7/10"), b"45"),
            answer(206, Some("bytes 0-3/10"), b"0123"),
            answer(206, None, b"4567"),
            answer(200, None, b"0123456789"),
        ] {
            assert!(matches!(judged(broken), RangeAnswer::Broken(_)));
        }
        for changed in [answer(412, None, b""), answer(404, None, b"")] {
            assert!(matches!(judged(changed), RangeAnswer::Changed(_)));
        }
        assert_eq!(judged(answer(400, None, b"")), RangeAnswer::Unexpected);
        // A server that answers the whole object to a range that is all of it.
        let small = Pinned {
            size: 4,
            version: None,
        };
        assert_eq!(
            judge(&answer(200, None, b"0123"), 0, 4, &small),
            RangeAnswer::Range
        );
    }

    #[test]
    fn an_answer_of_another_version_is_refused() {
        let pinned = Pinned {
            size: 10,
            version: Some(("etag", "\"v1\"".into())),
        };
        let mut a = answer(206, Some("bytes 4-7/10"), b"4567");
        assert_eq!(
            judge(&a, 4, 8, &pinned),
            RangeAnswer::Range,
            "no version named"
        );
        a.headers.insert("etag", HeaderValue::from_static("\"v1\""));
        assert_eq!(judge(&a, 4, 8, &pinned), RangeAnswer::Range);
        a.headers.insert("etag", HeaderValue::from_static("\"v2\""));
        assert!(matches!(judge(&a, 4, 8, &pinned), RangeAnswer::Changed(_)));
    }
}
