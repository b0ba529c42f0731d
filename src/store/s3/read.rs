//! Reading S3 back (`verify`): ListObjectsV2 page by page with its continuation
//! tokens, the size from a HEAD, and an object read range by range, each range asked
//! with `If-Match` of the ETag the HEAD saw and refused when it names another.

use std::io::Read;

use s3::command::Command;

use super::S3Store;
use crate::store::client::read::{
    all_pages, relative_names, unreadable_page, xml_elements, ListPage, Pinned, RangedReader,
    LIST_PAGE,
};
use crate::store::client::{missing, Request};
use crate::store::StoreError;

impl S3Store {
    pub(super) fn list_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.full_key(prefix);
        let what = format!("S3 list of {}", self.location(&full));
        let keys = all_pages(&what, |token| {
            let url = self.url(
                "/",
                Command::ListObjectsV2 {
                    prefix: full.clone(),
                    delimiter: None,
                    continuation_token: token.map(str::to_string),
                    start_after: None,
                    max_keys: Some(LIST_PAGE),
                },
            )?;
            let answer = self
                .client
                .send(&self.proto, &what, || Ok(Request::new("GET", url.clone())))?;
            match answer.status {
                200 => list_page(&String::from_utf8_lossy(&answer.body))
                    .map_err(|e| unreadable_page(&what, e)),
                404 => Err(missing(&self.proto)),
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        })?;
        Ok(relative_names(keys, &self.settings.prefix, prefix))
    }

    pub(super) fn object_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.head(&self.full_key(key))?.map(|h| h.size))
    }

    pub(super) fn object_stream(
        &self,
        key: &str,
    ) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        let key = self.full_key(key);
        let Some(head) = self.head(&key)? else {
            return Ok(None);
        };
        let url = self.url(&key, Command::GetObject)?;
        let what = format!("S3 GET of {}", self.location(&key));
        let pinned = Pinned {
            size: head.size,
            version: head.etag.clone().map(|e| ("etag", e)),
        };
        let etag = head.etag;
        let reader = RangedReader::new(&self.client, &self.proto, what, pinned, move |range| {
            let r = Request::new("GET", url.clone()).header("range", range);
            match &etag {
                Some(e) => r.header("if-match", e.clone()),
                None => r,
            }
        });
        Ok(Some(Box::new(reader)))
    }
}

/// The keys of one ListObjectsV2 answer and its `NextContinuationToken` while it says
/// `IsTruncated`; a truncated answer without a token is refused (the listing would
/// silently end early).
fn list_page(xml: &str) -> Result<ListPage, String> {
    let first = |tag| xml_elements(xml, tag).next().map(|e| e.text);
    if !xml.contains("<ListBucketResult") {
        return Err("the answer is not a ListBucketResult".into());
    }
    let names = xml_elements(xml, "Key").map(|e| e.text).collect();
    let truncated = first("IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = match (truncated, first("NextContinuationToken")) {
        (false, _) => None,
        (true, Some(token)) if !token.is_empty() => Some(token),
        (true, _) => {
            return Err("the answer is truncated but names no NextContinuationToken".into())
        }
    };
    Ok(ListPage { names, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_give_their_keys_and_the_next_token() {
        let page = |truncated, token: &str| {
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>calls</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>{truncated}</IsTruncated>{token}<Contents><Key>p/a &amp; b.ogg</Key><LastModified>2024-09-09T15:45:47.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>3</Size></Contents><Contents><Key>p/c.jsonl</Key><Size>0</Size></Contents></ListBucketResult>"#
            )
        };
        let first = list_page(&page(
            "true",
            "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>",
        ))
        .unwrap();
        assert_eq!(first.names, ["p/a & b.ogg", "p/c.jsonl"]);
        assert_eq!(
            first.next.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        assert_eq!(list_page(&page("false", "")).unwrap().next, None);
        let err = list_page(&page("true", "")).unwrap_err();
        assert!(err.contains("NextContinuationToken"), "{err}");
        assert!(list_page("<Error><Code>x</Code></Error>").is_err());
        let empty = list_page(
            "<ListBucketResult><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .unwrap();
        assert_eq!(empty, ListPage::default());
    }
}
