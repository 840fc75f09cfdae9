//! What a request asks for: the path parsed into group, version, namespace, resource, name and
//! subresource (like upstream's RequestInfo), and the query parameters.

use std::collections::HashMap;

/// A resource request's path, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...`; `None` when not a resource path.
pub fn parse_resource_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let mut p = ResourcePath {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    if rest.first() == Some(&"watch") {
        p.watch_prefix = true;
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !matches!(rest[2], "status" | "finalize")
    {
        p.namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    if rest.iter().any(|s| s.is_empty()) || rest.len() > 3 {
        return None;
    }
    p.resource = rest.first()?.to_string();
    p.name = rest.get(1).map(|s| s.to_string());
    p.subresource = rest.get(2).map(|s| s.to_string());
    Some(p)
}

/// Decodes `%XX` escapes and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters; repeated keys keep every value in order (exec's `command`).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    first: HashMap<String, usize>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut out = Query::default();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            out.first.entry(k.clone()).or_insert(out.pairs.len());
            out.pairs.push((k, v));
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.first.get(key).map(|&i| self.pairs[i].1.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, parsed like Go's `strconv.ParseBool` (clients send `True` too).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True" | "")
        )
    }

    /// A boolean parameter when present and well-formed.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        }
    }

    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p =
            parse_resource_path("/apis/apps/v1/namespaces/default/deployments/web/scale").unwrap();
        assert_eq!(
            (
                p.group.as_str(),
                p.namespace.as_deref(),
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            (
                "apps",
                Some("default"),
                "deployments",
                Some("web"),
                Some("scale")
            )
        );
        let p = parse_resource_path("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref(), p.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let p = parse_resource_path("/api/v1/namespaces/x/status").unwrap();
        assert_eq!(
            (
                p.resource.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("status"))
        );
        let p = parse_resource_path("/api/v1/watch/namespaces/x/pods").unwrap();
        assert!(p.watch_prefix);
        assert_eq!(
            (p.resource.as_str(), p.namespace.as_deref()),
            ("pods", Some("x"))
        );
        assert!(parse_resource_path("/api/v1").is_none());
        assert!(parse_resource_path("/api/v1/pods/a/b/c").is_none());
    }

    #[test]
    fn query() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&command=ls&command=-l&watch=true",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(q.all("command").collect::<Vec<_>>(), ["ls", "-l"]);
        assert!(q.flag("watch"));
        assert_eq!(Query::parse(Some("a=%zz%")).get("a"), Some("%zz%"));
    }
}
