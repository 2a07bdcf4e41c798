//! Image references in messages: `data:` URLs split into media type and base64 payload,
//! and a media type guessed from an http URL's file extension.

/// `data:image/png;base64,AAAA` → `("image/png", "AAAA")`. Only base64 data URLs
/// qualify: vendors take images as base64, never as percent-encoded text.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let mime = if mime.is_empty() {
        "application/octet-stream"
    } else {
        mime
    };
    Some((mime, data))
}

/// The image media type an URL's extension suggests (`image/jpeg` when unknown).
pub fn guess_image_type(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,iVBOR"),
            Some(("image/png", "iVBOR"))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://x/y.png"), None);
        assert_eq!(guess_image_type("https://x/y.PNG?s=1"), "image/png");
        assert_eq!(guess_image_type("https://x/y"), "image/jpeg");
    }
}
