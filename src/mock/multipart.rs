//! Just enough of `multipart/form-data` (RFC 7578) to read a Files API upload: the boundary from
//! the content type, then each part's name, filename and bytes.
//!
//! Written by hand rather than with a multipart crate: the mock reads one known form of two
//! fields, and this keeps the dependency tree (and build time) unchanged.

/// One part of a form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// `name="…"` of its `Content-Disposition`.
    pub(crate) name: String,
    /// `filename="…"`, when it is a file.
    pub(crate) filename: Option<String>,
    /// The part's bytes.
    pub(crate) data: Vec<u8>,
}

/// The boundary of a `multipart/form-data; boundary=…` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The parts of `body`, or why it is not a form with this boundary.
pub(crate) fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut rest = match find(body, &delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return Err("the body does not contain the form boundary".to_owned()),
    };
    let mut parts = Vec::new();
    let separator = [b"\r\n".as_slice(), &delimiter].concat();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a form boundary is not followed by a line break")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("a form part has no blank line")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let after_head = &rest[head_end + 4..];
        let end = find(after_head, &separator).ok_or("a form part is not closed")?;
        parts.push(Part {
            name: disposition_param(&head, "name").ok_or("a form part has no name")?,
            filename: disposition_param(&head, "filename"),
            data: after_head[..end].to_vec(),
        });
        rest = &after_head[end + separator.len()..];
    }
}

/// `param="…"` of the part's `Content-Disposition` header.
fn disposition_param(head: &str, param: &str) -> Option<String> {
    let line = head.lines().find(|line| {
        line.to_ascii_lowercase()
            .starts_with("content-disposition:")
    })?;
    line.split(';').skip(1).find_map(|item| {
        let (name, value) = item.split_once('=')?;
        (name.trim() == param).then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_files_api_upload() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
Content-Type: application/jsonl\r\n\r\n{\"a\":1}\n{\"a\":2}\n\r\n--XyZ--\r\n";
        let boundary = boundary("multipart/form-data; boundary=XyZ").unwrap();
        let parts = parse(body, &boundary).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn refuses_what_is_not_a_form() {
        assert_eq!(boundary("application/json"), None);
        assert!(parse(b"no boundary here", "XyZ").is_err());
        assert!(
            parse(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nopen",
                "XyZ"
            )
            .is_err()
        );
    }
}
