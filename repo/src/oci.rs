//! The OCI distribution API, as much as a repository needs: blobs pushed with a monolithic
//! upload (`POST /v2/<name>/blobs/uploads/`, then `PUT <location>?digest=`), read with
//! Range GETs (`GET /v2/<name>/blobs/<digest>`), and the index as a blob referenced by an
//! image manifest tagged `index`, whose other layers are every published package (so the
//! registry's garbage collection keeps them).

use std::path::Path;

use serde::Deserialize;

use crate::http::{self, Body, Url};
use crate::index::INDEX_MAX;
use crate::remote::Policy;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.packagefs.index.v1";
const PACKAGE_TYPE: &str = "application/vnd.packagefs.package.v1";
const DELTA_TYPE: &str = "application/vnd.packagefs.delta.v1";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const INDEX_TAG: &str = "index";

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(rename = "mediaType")]
    media_type: String,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

fn long(p: &Policy) -> http::Timeouts {
    http::Timeouts {
        total: std::time::Duration::from_secs(3600),
        ..p.timeouts
    }
}

/// The index bytes, or `None` when the registry has no index tag yet.
pub fn fetch_index_opt(registry: &Url, name: &str, p: &Policy) -> Result<Option<Vec<u8>>, String> {
    let url = registry.join(&format!("v2/{name}/manifests/{INDEX_TAG}"));
    let r = http::request(
        "GET",
        &url,
        &[("Accept", MANIFEST)],
        Body::Empty,
        4 << 20,
        p.timeouts,
    )
    .map_err(|e| format!("{url}: {e}"))?;
    if r.status == 404 {
        return Ok(None);
    }
    if r.status != 200 {
        return Err(format!("{url}: HTTP {}", r.status));
    }
    let m: Manifest =
        serde_json::from_slice(&r.body).map_err(|e| format!("{url}: not a manifest: {e}"))?;
    let d = m
        .layers
        .iter()
        .find(|d| d.media_type == INDEX_TYPE)
        .ok_or_else(|| format!("{url}: the manifest has no index layer"))?;
    if !crate::index::valid_digest(&d.digest) {
        return Err(format!("{url}: bad digest {:?}", d.digest));
    }
    let blob = registry.join(&format!("v2/{name}/blobs/{}", d.digest));
    let r = http::request("GET", &blob, &[], Body::Empty, INDEX_MAX, p.timeouts)
        .map_err(|e| format!("{blob}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{blob}: HTTP {}", r.status));
    }
    if crate::sha256(&r.body) != d.digest {
        return Err(format!("{blob}: the blob does not match its digest"));
    }
    Ok(Some(r.body))
}

/// The index bytes.
pub fn fetch_index(registry: &Url, name: &str, p: &Policy) -> Result<Vec<u8>, String> {
    fetch_index_opt(registry, name, p)?.ok_or_else(|| "no index tag".to_string())
}

fn blob_exists(registry: &Url, name: &str, digest: &str, p: &Policy) -> bool {
    let url = registry.join(&format!("v2/{name}/blobs/{digest}"));
    http::request("HEAD", &url, &[], Body::Empty, 0, p.timeouts).is_ok_and(|r| r.status == 200)
}

fn push_blob(
    registry: &Url,
    name: &str,
    digest: &str,
    body: Body<'_>,
    p: &Policy,
) -> Result<(), String> {
    let start = registry.join(&format!("v2/{name}/blobs/uploads/"));
    let r = http::request("POST", &start, &[], Body::Empty, 1 << 16, p.timeouts)
        .map_err(|e| format!("POST {start}: {e}"))?;
    if r.status != 202 {
        return Err(format!("POST {start}: HTTP {}", r.status));
    }
    let loc = r
        .header("location")
        .ok_or_else(|| format!("POST {start}: no Location"))?;
    if loc.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "POST {start}: a Location with spaces or control bytes"
        ));
    }
    // Absolute or relative to the registry.
    let mut url = match loc.strip_prefix("http://") {
        Some(_) => Url::parse(loc)?,
        None => Url {
            path: loc.to_owned(),
            ..registry.clone()
        },
    };
    url.path
        .push(if url.path.contains('?') { '&' } else { '?' });
    url.path.push_str(&format!("digest={digest}"));
    let r = http::request(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        body,
        1 << 16,
        long(p),
    )
    .map_err(|e| format!("PUT blob {digest}: {e}"))?;
    if r.status != 201 {
        return Err(format!(
            "PUT blob {digest}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ));
    }
    Ok(())
}

/// Pushes a package file as blob `digest` unless it is there; true if pushed.
pub fn push_blob_file(
    registry: &Url,
    name: &str,
    path: &Path,
    digest: &str,
    p: &Policy,
) -> Result<bool, String> {
    if blob_exists(registry, name, digest, p) {
        return Ok(false);
    }
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    push_blob(registry, name, digest, Body::File(&f, len), p)?;
    Ok(true)
}

/// Pushes the index as a blob and tags a manifest naming it and every package object.
pub fn push_index(
    registry: &Url,
    name: &str,
    index: &[u8],
    objects: &[(String, u64, bool)],
    p: &Policy,
) -> Result<(), String> {
    let digest = crate::sha256(index);
    if !blob_exists(registry, name, &digest, p) {
        push_blob(registry, name, &digest, Body::Bytes(index), p)?;
    }
    let empty = b"{}";
    let empty_digest = crate::sha256(empty);
    if !blob_exists(registry, name, &empty_digest, p) {
        push_blob(registry, name, &empty_digest, Body::Bytes(empty), p)?;
    }
    let mut layers = vec![serde_json::json!({
        "mediaType": INDEX_TYPE, "digest": digest, "size": index.len()
    })];
    for (d, size, delta) in objects {
        let media = if *delta { DELTA_TYPE } else { PACKAGE_TYPE };
        layers.push(serde_json::json!({"mediaType": media, "digest": d, "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": EMPTY_TYPE, "digest": empty_digest, "size": 2},
        "layers": layers,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let url = registry.join(&format!("v2/{name}/manifests/{INDEX_TAG}"));
    let r = http::request(
        "PUT",
        &url,
        &[("Content-Type", MANIFEST)],
        Body::Bytes(&body),
        1 << 16,
        p.timeouts,
    )
    .map_err(|e| format!("PUT {url}: {e}"))?;
    if r.status != 201 {
        return Err(format!(
            "PUT {url}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ));
    }
    Ok(())
}
