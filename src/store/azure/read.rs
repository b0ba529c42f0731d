//! Reading Azure back (`verify`): List Blobs page by page with its markers, the size
//! from Get Blob Properties (a HEAD), and a blob read range by range (`x-ms-range`),
//! each range asked with `If-Match` of the ETag the HEAD saw and refused when it names
//! another.

use std::io::Read;

use super::credential::encode_query_value;
use super::AzureStore;
use crate::store::client::read::{
    all_pages, relative_names, unreadable_page, xml_elements, ListPage, Pinned, RangedReader,
    LIST_PAGE,
};
use crate::store::client::{Answer, Request};
use crate::store::{prefixed, StoreError};

impl AzureStore {
    pub(super) fn list_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = prefixed(&self.settings.prefix, prefix);
        let what = format!(
            "listing blobs under {full:?} in container {}",
            self.where_()
        );
        let base = format!(
            "{}?restype=container&comp=list&maxresults={LIST_PAGE}&prefix={}",
            self.container_url(),
            encode_query_value(&full)
        );
        let names = all_pages(&what, |marker| {
            let url = match marker {
                Some(m) => format!("{base}&marker={}", encode_query_value(m)),
                None => base.clone(),
            };
            let answer = self
                .client
                .send(&self.proto, &what, || Ok(Request::new("GET", url.clone())))?;
            match answer.status {
                200 => list_page(&String::from_utf8_lossy(&answer.body))
                    .map_err(|e| unreadable_page(&what, e)),
                _ => Err(self.client.unexpected(&self.proto, &what, &answer)),
            }
        })?;
        Ok(relative_names(names, &self.settings.prefix, prefix))
    }

    /// Get Blob Properties, which must give the blob's length; `None` when there is no
    /// blob.
    fn properties(&self, name: &str) -> Result<Option<Answer>, StoreError> {
        match self.head(name)? {
            Some(answer) if length(&answer).is_none() => Err(StoreError::transient(format!(
                "{}: the answer has no Content-Length",
                self.reading_properties(name)
            ))),
            found => Ok(found),
        }
    }

    pub(super) fn blob_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let name = self.blob_name(key)?;
        Ok(self.properties(&name)?.and_then(|a| length(&a)))
    }

    pub(super) fn blob_stream(&self, key: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        let name = self.blob_name(key)?;
        let Some(properties) = self.properties(&name)? else {
            return Ok(None);
        };
        let size = length(&properties).unwrap_or_default();
        let etag = properties.header("etag").map(str::to_string);
        let url = self.blob_url(&name, &[]);
        let what = format!("reading blob {name} from container {}", self.where_());
        let pinned = Pinned {
            size,
            version: etag.clone().map(|e| ("etag", e)),
        };
        let reader = RangedReader::new(&self.client, &self.proto, what, pinned, move |range| {
            let r = Request::new("GET", url.clone()).header("x-ms-range", range);
            match &etag {
                Some(e) => r.header("if-match", e.clone()),
                None => r,
            }
        });
        Ok(Some(Box::new(reader)))
    }
}

fn length(answer: &Answer) -> Option<u64> {
    answer.header("content-length")?.parse().ok()
}

/// The blob names of one List Blobs answer (a name sent `Encoded="true"` is
/// percent-decoded) and its `NextMarker`.
fn list_page(xml: &str) -> Result<ListPage, String> {
    if !xml.contains("<EnumerationResults") {
        return Err("the answer is not an EnumerationResults document".into());
    }
    let names = xml_elements(xml, "Name")
        .map(|e| {
            if e.attributes.replace(' ', "").contains("Encoded=\"true\"") {
                crate::encoding::percent_decode(&e.text)
                    .ok_or_else(|| format!("the encoded blob name {:?} does not decode", e.text))
            } else {
                Ok(e.text)
            }
        })
        .collect::<Result<_, _>>()?;
    let next = xml_elements(xml, "NextMarker").next().map(|e| e.text);
    Ok(ListPage { names, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_give_their_names_and_the_next_marker() {
        let page = |marker: &str| {
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="spinoco-sync"><Prefix>p/</Prefix><MaxResults>5000</MaxResults><Blobs><Blob><Name>p/a &amp; b.ogg</Name><Properties><Content-Length>3</Content-Length></Properties></Blob><Blob><Name Encoded="true">p/%E2%80%AEc</Name><Properties /></Blob></Blobs>{marker}</EnumerationResults>"#
            )
        };
        let first = list_page(&page("<NextMarker>2!88!MDAwMDIx</NextMarker>")).unwrap();
        assert_eq!(first.names, ["p/a & b.ogg", "p/\u{202e}c"]);
        assert_eq!(first.next.as_deref(), Some("2!88!MDAwMDIx"));
        assert_eq!(
            list_page(&page("<NextMarker />")).unwrap().next.as_deref(),
            Some("")
        );
        assert_eq!(list_page(&page("")).unwrap().next, None);
        assert!(list_page("<Error><Code>AuthorizationFailure</Code></Error>").is_err());
        assert!(list_page(
            r#"<EnumerationResults><Blobs><Blob><Name Encoded="true">%ZZ</Name></Blob></Blobs></EnumerationResults>"#
        )
        .is_err());
    }
}
