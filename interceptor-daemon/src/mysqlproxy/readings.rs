//! What a MySQL text reads as, remembered per session: a text the session
//! sends again (a pool's validation query, an ORM's session set-up, `COMMIT`,
//! a statement prepared on every checkout) is not parsed again.
//!
//! Keyed by the exact text: two texts differing in any byte, literals
//! included, are read separately (a literal can hold SQL: `PREPARE s FROM
//! '...'`). Only the reading is kept; the policy decides every time, so a
//! reload or a time window applies at once.

use std::{collections::HashMap, sync::Arc};

use crate::sql::{Classifier, StatementInfo};

/// Most texts a session remembers; the set starts over when full.
const MAX_READINGS: usize = 64;
/// Longer texts are read every time rather than kept.
const MAX_TEXT: usize = 1024;

/// A text's classification and its description for the audit log.
#[derive(Debug)]
pub(super) struct Reading {
    pub(super) statements: Vec<StatementInfo>,
    /// Kinds, tables and literal-free text (`write on [orders]: INSERT INTO
    /// orders VALUES (?, ?)`).
    pub(super) description: String,
}

#[derive(Debug, Default)]
pub(super) struct Readings {
    by_text: HashMap<Box<str>, Arc<Reading>>,
}

impl Readings {
    pub(super) fn read(&mut self, sql: &str, classifier: &Classifier) -> Arc<Reading> {
        if let Some(r) = self.by_text.get(sql) {
            return r.clone();
        }
        let r = Arc::new(reading(sql, classifier));
        if sql.len() <= MAX_TEXT {
            if self.by_text.len() >= MAX_READINGS {
                self.by_text.clear();
            }
            self.by_text.insert(sql.into(), r.clone());
        }
        r
    }
}

fn reading(sql: &str, classifier: &Classifier) -> Reading {
    let (c, text) = classifier.classify_mysql_text(sql);
    Reading {
        description: format!("{}: {text}", c.summary()),
        statements: c.statements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_read_once_and_only_that_exact_text_shares_it() {
        let c = Classifier::default();
        let mut r = Readings::default();
        let a = r.read("INSERT INTO orders VALUES (1, 2)", &c);
        assert_eq!(
            a.description,
            "write on [orders]: INSERT INTO orders VALUES (?, ?)"
        );
        assert!(Arc::ptr_eq(
            &a,
            &r.read("INSERT INTO orders VALUES (1, 2)", &c)
        ));
        // Other literals are another text, read on its own.
        let b = r.read("INSERT INTO orders VALUES (1, 3)", &c);
        assert!(!Arc::ptr_eq(&a, &b));
        let p = r.read("PREPARE s FROM 'DELETE FROM customers'", &c);
        assert_ne!(p.description, a.description);
        // Bounded: the set starts over rather than grow.
        for i in 0..MAX_READINGS * 2 {
            r.read(&format!("SELECT {i}"), &c);
        }
        assert!(r.by_text.len() <= MAX_READINGS);
        let long = format!("SELECT '{}'", "x".repeat(MAX_TEXT));
        let before = r.by_text.len();
        r.read(&long, &c);
        assert_eq!(r.by_text.len(), before, "long texts are not kept");
    }
}
