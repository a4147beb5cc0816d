//! Value detectors: find secrets and personal data inside any text value.
//!
//! Each detector is a regex, some with a validator that removes look-alikes
//! (a card number must pass the Luhn check). Matches of all detectors and
//! custom regexes are merged; overlapping matches take the strongest
//! treatment of those involved.

use std::{ops::Range, sync::LazyLock};

use regex::Regex;
use serde::Deserialize;

use super::{MaskKey, MaskPlan, Strategy, Treatment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Payment card numbers: 13-19 digits, optionally grouped by spaces or
    /// dashes, passing the Luhn check.
    Card,
    /// JSON Web Tokens (`eyJ...`.`...`.`...`).
    Jwt,
    /// AWS access key ids (`AKIA...`, `ASIA...`).
    AwsKey,
    /// PEM private-key blocks (also a block cut off before its END line).
    PrivateKey,
    /// `Bearer <token>` credentials.
    Bearer,
}

fn re(p: &str) -> Regex {
    // The patterns are constants covered by the tests below.
    Regex::new(p).unwrap_or_else(|e| panic!("built-in detector pattern: {e}"))
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b[a-z0-9][a-z0-9._%+\-]*@[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{2,}\b",
    )
});
static CARD: LazyLock<Regex> = LazyLock::new(|| re(r"\b\d(?:[ \-]?\d){12,18}\b"));
static JWT: LazyLock<Regex> =
    LazyLock::new(|| re(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"));
static AWS_KEY: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"));
static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)")
});
static BEARER: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*"));

/// Luhn checksum over the digits of `s` (other characters ignored).
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Detector {
    fn regex(&self) -> &'static Regex {
        match self {
            Detector::Email => &EMAIL,
            Detector::Card => &CARD,
            Detector::Jwt => &JWT,
            Detector::AwsKey => &AWS_KEY,
            Detector::PrivateKey => &PRIVATE_KEY,
            Detector::Bearer => &BEARER,
        }
    }

    /// Byte ranges of this detector's findings in `text`.
    pub fn find(&self, text: &str) -> Vec<Range<usize>> {
        self.regex()
            .find_iter(text)
            .filter(|m| *self != Detector::Card || luhn(m.as_str()))
            .map(|m| m.range())
            .collect()
    }
}

/// Every finding of the plan's detectors and regexes in `text`, merged and
/// sorted, each with the treatment to apply.
pub fn findings(plan: &MaskPlan, text: &str) -> Vec<(Range<usize>, Treatment)> {
    let mut hits: Vec<(Range<usize>, Treatment)> = Vec::new();
    for spec in &plan.specs {
        for d in &spec.detectors {
            hits.extend(d.find(text).into_iter().map(|r| (r, spec.treatment)));
        }
        for r in &spec.regex {
            hits.extend(
                r.find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| (m.range(), spec.treatment)),
            );
        }
    }
    hits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut merged: Vec<(Range<usize>, Treatment)> = Vec::with_capacity(hits.len());
    for (r, t) in hits {
        match merged.last_mut() {
            Some((last, lt)) if r.start < last.end => {
                last.end = last.end.max(r.end);
                *lt = lt.stronger(t);
            }
            _ => merged.push((r, t)),
        }
    }
    merged
}

/// The outcome of scanning one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    Unchanged,
    Changed(String),
    /// A finding's treatment is `null`: the whole value becomes NULL.
    Null,
}

/// `text` with every finding replaced.
pub fn scrub(plan: &MaskPlan, text: &str, key: &MaskKey) -> Scrubbed {
    let found = findings(plan, text);
    if found.is_empty() {
        return Scrubbed::Unchanged;
    }
    if found.iter().any(|(_, t)| t.strategy == Strategy::Null) {
        return Scrubbed::Null;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, t) in found {
        out.push_str(text.get(at..r.start).unwrap_or_default());
        let part = text.get(r.clone()).unwrap_or_default();
        out.push_str(&t.render(part, key).unwrap_or_default());
        at = r.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    Scrubbed::Changed(out)
}

/// `text` with every finding replaced where a value cannot become NULL (a
/// COPY line, an error message): `null` findings are redacted. `None` when
/// nothing was found.
pub fn scrub_inline(plan: &MaskPlan, text: &str, key: &MaskKey) -> Option<String> {
    let found = findings(plan, text);
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, t) in found {
        out.push_str(text.get(at..r.start).unwrap_or_default());
        let t = if t.strategy == Strategy::Null {
            Treatment::new(Strategy::Redact, 0)
        } else {
            t
        };
        let part = text.get(r.clone()).unwrap_or_default();
        out.push_str(&t.render(part, key).unwrap_or_default());
        at = r.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::MaskSpec;

    #[test]
    fn luhn_table() {
        for (s, ok) in [
            ("4111111111111111", true),
            ("4111 1111 1111 1111", true),
            ("5500-0000-0000-0004", true),
            ("378282246310005", true),
            ("4111111111111112", false),
            ("1234567812345678", false),
            ("0000", false),
        ] {
            assert_eq!(luhn(s), ok, "{s}");
        }
    }

    #[test]
    fn detectors_find_what_they_should_and_nothing_else() {
        use Detector::*;
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2J5dGVz";
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----";
        // (detector, text, expected matched substrings)
        let table: Vec<(Detector, String, Vec<&str>)> = vec![
            (
                Email,
                "mail ada@example.com, Grace.H+x@mail.co.uk!".into(),
                vec!["ada@example.com", "Grace.H+x@mail.co.uk"],
            ),
            (Email, "not@mail, @example.com, a@b".into(), vec![]),
            (
                Card,
                "pay 4111 1111 1111 1111 or 5500-0000-0000-0004".into(),
                vec!["4111 1111 1111 1111", "5500-0000-0000-0004"],
            ),
            // 16 digits failing Luhn: an order number, not a card.
            (Card, "order 1234567812345678".into(), vec![]),
            (Card, "phone 555 0100".into(), vec![]),
            (Jwt, format!("token={jwt};"), vec![jwt]),
            (Jwt, "eyJust a word.with.dots".into(), vec![]),
            (
                AwsKey,
                "id AKIAIOSFODNN7EXAMPLE here".into(),
                vec!["AKIAIOSFODNN7EXAMPLE"],
            ),
            (AwsKey, "AKIA123".into(), vec![]),
            (PrivateKey, format!("k: {pem} end"), vec![pem]),
            (
                PrivateKey,
                "-----BEGIN PRIVATE KEY-----\nMIIEv (cut".into(),
                vec!["-----BEGIN PRIVATE KEY-----\nMIIEv (cut"],
            ),
            (
                PrivateKey,
                "-----BEGIN PUBLIC KEY-----\nMIIB".into(),
                vec![],
            ),
            (
                Bearer,
                "Authorization: Bearer abcDEF123.456-_~+/==".into(),
                vec!["Bearer abcDEF123.456-_~+/=="],
            ),
            (Bearer, "the bearer of news".into(), vec![]),
        ];
        for (d, text, want) in table {
            let got: Vec<&str> = d.find(&text).into_iter().map(|r| &text[r]).collect();
            assert_eq!(got, want, "{d:?} in {text:?}");
        }
    }

    fn plan(yaml: &[&str]) -> MaskPlan {
        MaskPlan {
            specs: yaml
                .iter()
                .map(|y| {
                    serde_yaml::from_str::<MaskSpec>(y)
                        .unwrap()
                        .compiled()
                        .unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn scrub_replaces_findings_with_the_strongest_treatment() {
        let key = MaskKey::from_bytes([1; 32]);
        let p = plan(&[
            "{detectors: [email, card], strategy: partial, keep_last: 4}",
            "{regex: ['(?i)secret-[a-z0-9]+'], strategy: redact}",
        ]);
        let s = |t: &str| scrub(&p, t, &key);
        let changed = |x: &str| Scrubbed::Changed(x.into());
        assert_eq!(s("nothing here"), Scrubbed::Unchanged);
        assert_eq!(
            s("card 4111-1111-1111-1111 mail ada@example.com"),
            changed("card ****1111 mail ****.com")
        );
        assert_eq!(s("x SECRET-abc123 y"), changed("x [redacted] y"));
        // Overlap: the custom regex covers the e-mail; redact beats partial.
        assert_eq!(s("secret-ada@example.com"), changed("[redacted]"));
        assert_eq!(s("order 1234567812345678"), Scrubbed::Unchanged);
        let n = plan(&["{detectors: [jwt], strategy: null}"]);
        assert_eq!(
            scrub(&n, "a eyJhbGciOi.eyJzdWIi.sig b", &key),
            Scrubbed::Null,
            "null empties the value"
        );
    }
}
