//! The console's static files, embedded in the binary (`include_str!`):
//! nothing is fetched from anywhere else at run time.

pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const ASSETS: &[(&str, Asset)] = &[
    (
        "console.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../../console/console.js"),
        },
    ),
    (
        "console.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("../../console/console.css"),
        },
    ),
];

/// The embedded file `name`, if there is one.
pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_asset_is_embedded_and_has_a_type() {
        for name in ["console.js", "console.css"] {
            let a = super::get(name).unwrap();
            assert!(!a.body.is_empty(), "{name}");
            assert!(a.content_type.contains("charset=utf-8"));
        }
        assert!(super::get("../Cargo.toml").is_none());
    }
}
