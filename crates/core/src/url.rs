//! Connection URLs in messages and logs.

/// `scheme://user:secret@host/...` -> `scheme://user:***@host/...`: a URL fit to print.
#[must_use]
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted_url("redis://ferry:s3cret@10.0.0.1:6379/0"),
            "redis://ferry:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(
            redacted_url("postgres://ferry:pw@db:5432/ferry"),
            "postgres://ferry:***@db:5432/ferry"
        );
    }
}
