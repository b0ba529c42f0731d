//! Reading GCS back (`verify`): the objects list page by page with its `pageToken`,
//! the size from the object's metadata, and an object read range by range
//! (`alt=media`), each range asked with `ifGenerationMatch` of the generation the
//! metadata named and refused when its `x-goog-generation` names another.

use std::io::Read;

use super::{generation_of, GcsStore};
use crate::encoding::percent_encode;
use crate::store::client::read::{
    all_pages, relative_names, unreadable_page, ListPage, Pinned, RangedReader, LIST_PAGE,
};
use crate::store::client::{missing, Request};
use crate::store::StoreError;

impl GcsStore {
    pub(super) fn list_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.object_name(prefix);
        let what = format!("GCS list of {}", self.gs(&full));
        let base = format!(
            "{}/storage/v1/b/{}/o?prefix={}&maxResults={LIST_PAGE}&userProject={}",
            self.settings.endpoint,
            self.settings.bucket,
            percent_encode(&full, false),
            percent_encode(&self.settings.project, false)
        );
        let names = all_pages(&what, |token| {
            let url = match token {
                Some(t) => format!("{base}&pageToken={}", percent_encode(t, false)),
                None => base.clone(),
            };
            let answer = self.send(&what, || Ok(Request::new("GET", url.clone())))?;
            match answer.status {
                200 => list_page(&answer.body).map_err(|e| unreadable_page(&what, e)),
                404 => Err(missing(&self.proto)),
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        })?;
        Ok(relative_names(names, &self.settings.prefix, prefix))
    }

    pub(super) fn object_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let name = self.object_name(key);
        match self.resource_of(&name)? {
            Some(resource) => size_of(&resource).map(Some).ok_or_else(|| {
                StoreError::transient(format!(
                    "GCS metadata of {}: the answer names no size",
                    self.gs(&name)
                ))
            }),
            None => Ok(None),
        }
    }

    pub(super) fn object_stream(
        &self,
        key: &str,
    ) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        let name = self.object_name(key);
        let what = format!("GCS read of {}", self.gs(&name));
        let Some(resource) = self.resource_of(&name)? else {
            return Ok(None);
        };
        let (Some(size), Some(generation)) = (size_of(&resource), generation_of(&resource)) else {
            return Err(StoreError::transient(format!(
                "{what}: the object's metadata names no size or generation"
            )));
        };
        let url = format!(
            "{}&alt=media&ifGenerationMatch={}",
            self.object_url(&name),
            percent_encode(&generation, false)
        );
        let pinned = Pinned {
            size,
            version: Some(("x-goog-generation", generation.clone())),
        };
        let reader = RangedReader::new(&self.client, &self.proto, what, pinned, move |range| {
            Request::new("GET", url.clone()).header("range", range)
        });
        Ok(Some(Box::new(reader)))
    }
}

/// The object's size from its metadata (the JSON API writes it as a string).
fn size_of(resource: &serde_json::Value) -> Option<u64> {
    match &resource["size"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The names of one objects list answer and its `nextPageToken`.
fn list_page(body: &[u8]) -> Result<ListPage, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("the answer is not a JSON object".into());
    }
    let items: &[serde_json::Value] = match &v["items"] {
        serde_json::Value::Null => &[],
        serde_json::Value::Array(items) => items,
        _ => return Err("its \"items\" is not a list".into()),
    };
    let names = items
        .iter()
        .map(|item| {
            item["name"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "an item of the answer has no name".to_string())
        })
        .collect::<Result<_, _>>()?;
    let next = v["nextPageToken"].as_str().map(str::to_string);
    Ok(ListPage { names, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_give_their_names_and_the_next_token() {
        let first = list_page(
            br#"{"kind":"storage#objects","nextPageToken":"CgVwL2IubA==","items":[
                {"kind":"storage#object","name":"p/a.ogg","size":"3","generation":"1"},
                {"name":"p/b.jsonl","size":"0"}]}"#,
        )
        .unwrap();
        assert_eq!(first.names, ["p/a.ogg", "p/b.jsonl"]);
        assert_eq!(first.next.as_deref(), Some("CgVwL2IubA=="));
        let last = list_page(br#"{"kind":"storage#objects","items":[{"name":"p/c"}]}"#).unwrap();
        assert_eq!((last.names.len(), last.next), (1, None));
        // An empty prefix: no items at all.
        assert_eq!(
            list_page(br#"{"kind":"storage#objects"}"#).unwrap(),
            ListPage::default()
        );
        for broken in [
            &b"<html>"[..],
            b"[]",
            br#"{"items":{}}"#,
            br#"{"items":[{"size":"1"}]}"#,
        ] {
            assert!(
                list_page(broken).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn sizes_are_strings_or_numbers() {
        assert_eq!(
            size_of(&serde_json::json!({"size": "203344"})),
            Some(203344)
        );
        assert_eq!(size_of(&serde_json::json!({"size": 7})), Some(7));
        assert_eq!(size_of(&serde_json::json!({"size": "-1"})), None);
        assert_eq!(size_of(&serde_json::json!({})), None);
    }
}
