//! The chat page's files: built into the binary from `static/`, or loaded from a folder given
//! by `--static-dir` (read once at start-up and on SIGHUP, never per request, so the loop never
//! blocks on the filesystem and no request path can reach outside the folder).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::MAX_STATIC_DIR_BYTES;

/// The page served for `/` and every room path.
pub const INDEX: &str = "/index.html";

/// The files of `static/`, built in. `tests` check that this list matches the folder.
const BUILT_IN: &[(&str, &[u8])] = &[
    ("/index.html", include_bytes!("../static/index.html")),
    ("/chat.js", include_bytes!("../static/chat.js")),
    ("/chat.css", include_bytes!("../static/chat.css")),
];

pub struct Asset {
    pub body: Bytes,
    pub content_type: &'static str,
    /// A strong validator derived from the content, for `If-None-Match`.
    pub etag: String,
}

pub struct Assets {
    files: HashMap<String, Asset>,
}

#[derive(Debug)]
pub struct AssetError {
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "static folder {}: {}", self.path.display(), self.why)
    }
}

impl std::error::Error for AssetError {}

impl Assets {
    pub fn built_in() -> Self {
        let files = BUILT_IN
            .iter()
            .map(|(path, body)| (path.to_string(), Asset::new(path, Bytes::from_static(body))))
            .collect();
        Assets { files }
    }

    /// Loads every regular file under `dir` (recursively, symlinks not followed). The folder
    /// must contain `index.html`.
    pub fn load_dir(dir: &Path) -> Result<Self, AssetError> {
        let error = |why: String| AssetError {
            path: dir.to_path_buf(),
            why,
        };
        let mut files = HashMap::new();
        let mut total = 0usize;
        let mut pending = vec![(dir.to_path_buf(), String::new())];
        while let Some((folder, prefix)) = pending.pop() {
            let entries = std::fs::read_dir(&folder).map_err(|e| error(e.to_string()))?;
            for entry in entries {
                let entry = entry.map_err(|e| error(e.to_string()))?;
                let kind = entry.file_type().map_err(|e| error(e.to_string()))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let url = format!("{prefix}/{name}");
                if kind.is_dir() {
                    pending.push((entry.path(), url));
                } else if kind.is_file() {
                    let body = std::fs::read(entry.path())
                        .map_err(|e| error(format!("{}: {e}", entry.path().display())))?;
                    total += body.len();
                    if total > MAX_STATIC_DIR_BYTES {
                        return Err(error(format!(
                            "over {MAX_STATIC_DIR_BYTES} bytes; the page is held in memory"
                        )));
                    }
                    files.insert(url.clone(), Asset::new(&url, Bytes::from(body)));
                }
            }
        }
        if !files.contains_key(INDEX) {
            return Err(error("has no index.html".into()));
        }
        Ok(Assets { files })
    }

    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.files.get(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    pub fn index(&self) -> Option<&Asset> {
        self.files.get(INDEX)
    }

    pub fn total_bytes(&self) -> usize {
        self.files.values().map(|a| a.body.len()).sum()
    }
}

impl Asset {
    fn new(path: &str, body: Bytes) -> Self {
        Asset {
            etag: format!("\"{:016x}\"", fnv1a(&body)),
            content_type: content_type(path),
            body,
        }
    }
}

/// The `Content-Type` for a file name.
pub fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart for caching.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_matches_the_static_folder() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
        let on_disk = Assets::load_dir(&folder).expect("static/ loads");
        let built_in = Assets::built_in();
        let mut disk_names: Vec<_> = on_disk.files.keys().cloned().collect();
        let mut built_names: Vec<_> = built_in.files.keys().cloned().collect();
        disk_names.sort();
        built_names.sort();
        assert_eq!(disk_names, built_names, "add new static/ files to BUILT_IN");
        for (name, asset) in &built_in.files {
            assert_eq!(asset.body, on_disk.get(name).unwrap().body);
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("/chat.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("/x.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("/blob"), "application/octet-stream");
    }

    #[test]
    fn a_folder_without_index_is_refused() {
        let dir = std::env::temp_dir().join(format!("wschat-assets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("other.html"), "x").unwrap();
        assert!(Assets::load_dir(&dir).is_err());
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
        let assets = Assets::load_dir(&dir).unwrap();
        assert_eq!(&assets.index().unwrap().body[..], b"<p>hi</p>");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            Assets::load_dir(&dir).is_err(),
            "a missing folder is an error"
        );
    }
}
