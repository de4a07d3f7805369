//! Putting a key's fingerprint wherever server text holds the key: on text in memory
//! (`Redactor::replaced`), or on a body that arrives in pieces ([`StreamRedactor`]), which
//! keeps the last `key length - 1` bytes of each piece back until the next one shows whether
//! they start a key.

use memchr::memmem::Finder;

use super::key::ApiKey;

/// Shortest key looked for in server text. A shorter one is a placeholder (`EMPTY`, `token`,
/// what local servers are given), and replacing every occurrence of it would change answers
/// that merely contain the word.
const MIN_REDACTED_KEY: usize = 16;

/// Replaces a key in server text with its fingerprint. A server may quote the key it was sent
/// (`Incorrect API key provided: sk-…`: OpenAI masks it, some proxies do not), and that text
/// goes into the journal, the exports and onto terminals, none of which may hold a key.
pub struct Redactor {
    finder: Finder<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for `key`; `None` for a key too short to look for.
    pub(crate) fn new(key: &ApiKey) -> Option<Redactor> {
        let secret = key.secret();
        (secret.len() >= MIN_REDACTED_KEY).then(|| Redactor {
            finder: Finder::new(secret.as_bytes()).into_owned(),
            fingerprint: key.fingerprint().to_owned(),
        })
    }

    /// `bytes` with every occurrence of the key replaced; `None` when it holds none.
    pub(crate) fn replaced(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let first = self.finder.find(bytes)?;
        let needle = self.finder.needle().len();
        let mut out = Vec::with_capacity(bytes.len());
        let mut from = 0;
        let mut at = Some(first);
        while let Some(start) = at {
            out.extend_from_slice(&bytes[from..start]);
            out.extend_from_slice(self.fingerprint.as_bytes());
            from = start + needle;
            at = self.finder.find(&bytes[from..]).map(|i| from + i);
        }
        out.extend_from_slice(&bytes[from..]);
        Some(out)
    }

    /// A redactor for a body that arrives in pieces.
    pub(crate) fn stream(&self) -> StreamRedactor<'_> {
        StreamRedactor {
            redactor: self,
            carry: Vec::new(),
        }
    }
}

/// `Redactor::replaced` over a body given in pieces: what it gives, concatenated, is what
/// `replaced` gives on the whole body, wherever the pieces are cut.
#[derive(Debug)]
pub struct StreamRedactor<'a> {
    redactor: &'a Redactor,
    /// Bytes not given yet: the end of the last piece, which may be the start of a key.
    carry: Vec<u8>,
}

impl StreamRedactor<'_> {
    /// Takes the next piece and gives `out` all that can no longer be part of a key.
    pub(crate) fn push(&mut self, piece: &[u8], out: &mut impl FnMut(&[u8])) {
        let finder = &self.redactor.finder;
        let needle = finder.needle().len();
        self.carry.extend_from_slice(piece);
        let mut from = 0;
        while let Some(at) = finder.find(&self.carry[from..]) {
            out(&self.carry[from..from + at]);
            out(self.redactor.fingerprint.as_bytes());
            from += at + needle;
        }
        // A key starting before `keep` would lie wholly in the carry and have been found: only
        // the last `needle - 1` bytes may still start one.
        let keep = self.carry.len().saturating_sub(needle - 1).max(from);
        out(&self.carry[from..keep]);
        self.carry.drain(..keep);
    }

    /// Gives `out` what is left.
    pub(crate) fn finish(&mut self, out: &mut impl FnMut(&[u8])) {
        out(&self.carry);
        self.carry.clear();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY: &str = "sk-proj-abcdefghij0123456789wxyz";

    #[test]
    fn a_key_the_server_quotes_becomes_its_fingerprint_everywhere_in_the_text() {
        let key = ApiKey::new(KEY);
        let redactor = Redactor::new(&key).expect("a key");
        let quoted = format!("a {KEY} b {KEY}{KEY} c");
        let replaced = redactor.replaced(quoted.as_bytes()).expect("found");
        let fp = key.fingerprint();
        assert_eq!(
            String::from_utf8_lossy(&replaced),
            format!("a {fp} b {fp}{fp} c")
        );
        assert!(redactor.replaced(b"nothing to see").is_none());
        assert!(
            Redactor::new(&ApiKey::new("  ")).is_none(),
            "an empty key finds nothing"
        );
        assert!(
            Redactor::new(&ApiKey::new("EMPTY")).is_none(),
            "a placeholder is not looked for in answers"
        );
    }

    fn in_pieces(redactor: &Redactor, bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut sink = |piece: &[u8]| out.extend_from_slice(piece);
        let mut stream = redactor.stream();
        let mut from = 0;
        for &cut in cuts {
            let cut = cut.clamp(from, bytes.len());
            stream.push(&bytes[from..cut], &mut sink);
            from = cut;
        }
        stream.push(&bytes[from..], &mut sink);
        stream.finish(&mut sink);
        out
    }

    #[test]
    fn a_key_cut_by_every_possible_piece_boundary_is_still_replaced() {
        let key = ApiKey::new(KEY);
        let redactor = Redactor::new(&key).expect("a key");
        let body = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}."}}}}"#);
        let expected = redactor.replaced(body.as_bytes()).expect("found");
        for cut in 0..=body.len() {
            assert_eq!(
                in_pieces(&redactor, body.as_bytes(), &[cut]),
                expected,
                "{cut}"
            );
        }
        // Two cuts inside the key, one byte apart, and pieces of one byte.
        let start = body.find(KEY).expect("key");
        assert_eq!(
            in_pieces(&redactor, body.as_bytes(), &[start + 3, start + 4]),
            expected
        );
        let every: Vec<usize> = (0..body.len()).collect();
        assert_eq!(in_pieces(&redactor, body.as_bytes(), &every), expected);
    }

    proptest! {
        #[test]
        fn in_pieces_is_replaced_on_the_whole(
            parts in prop::collection::vec(prop_oneof![
                Just(KEY.to_owned()),
                Just(KEY[..10].to_owned()),
                Just(KEY[5..].to_owned()),
                "[a-z0-9 -]{0,12}",
            ], 0..8),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let key = ApiKey::new(KEY);
            let redactor = Redactor::new(&key).expect("a key");
            let body = parts.concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = redactor
                .replaced(body.as_bytes())
                .unwrap_or_else(|| body.as_bytes().to_vec());
            prop_assert_eq!(in_pieces(&redactor, body.as_bytes(), &cuts), whole);
        }
    }
}
