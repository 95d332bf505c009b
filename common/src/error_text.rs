//! One line for an error and every cause below it, for the places where an error becomes text that
//! outlives it (a bad sample's reason, a failed shard's reason, a message sent over the wire).

/// `e` and each cause in its source chain that the text so far does not already say, `: `-separated:
/// transport errors repeat themselves at several levels, and the real reason (reset, refused,
/// certificate) sits at the bottom.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    with_causes(e.to_string(), e.source())
}

/// `text` followed by the causes of `source` that it does not already say.
pub fn with_causes(mut text: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut src = source;
    while let Some(inner) = src {
        let t = inner.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        src = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer at {0}")]
    struct Outer(String, #[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    #[test]
    fn causes_are_appended_once() {
        let e = Outer("s3://b".into(), Inner);
        assert_eq!(error_chain(&e), "outer at s3://b: connection refused");
        assert_eq!(
            with_causes("x: connection refused".into(), Some(&Inner)),
            "x: connection refused"
        );
    }
}
