//! The dashboard: one static page (HTML, CSS and a script) compiled into the binary with
//! `include_str!` (no build step, no files to install). The node does no work for it beyond
//! answering the page's polls of `/quark/status`, `/quark/shards` and `/quark/load`; the script polls only
//! while the page is open and visible, once a second (`POLL_MS` in `assets/dashboard.js`),
//! one poll at a time.

const HTML: &str = include_str!("assets/dashboard.html");
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The asset served at `path`: `(content type, body)`.
pub(super) fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/dashboard" => Some(("text/html; charset=utf-8", HTML)),
        "/dashboard.css" => Some(("text/css; charset=utf-8", CSS)),
        "/dashboard.js" => Some(("text/javascript; charset=utf-8", JS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_its_assets() {
        let (ty, html) = asset("/").unwrap();
        assert!(ty.starts_with("text/html"));
        assert!(html.contains("src=\"/dashboard.js\""));
        assert!(html.contains("href=\"/dashboard.css\""));
        assert_eq!(asset("/dashboard"), asset("/"));
        assert!(JS.contains("/quark/shards") && JS.contains("/quark/status"));
        assert!(JS.contains("/quark/load"));
        assert!(asset("/dashboard.json").is_none());
    }
}
