//! `${NAME}` references to environment variables in a configuration file.
//!
//! One configuration serves every node of a cluster (a ConfigMap), but some
//! values differ per node: the address redirected connections land on is the
//! node's own IP, and the node name is recorded with every connection. The
//! Kubernetes downward API puts both into the environment; the file names them
//! as `${NODE_IP}` and `${NODE_NAME}`.
//!
//! Only the braced form is expanded, and `$${` stands for a literal `${`: a
//! bare `$` is legal in PostgreSQL identifiers and glob patterns, so shell-style
//! `$NAME` expansion (as general-purpose expanders do) would corrupt them. An
//! unset variable is an error naming it, never an empty string: an empty
//! listener address would otherwise surface as a confusing parse error.

/// Expands `${NAME}` with `lookup`; the error names the line and variable.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
        } else if let Some(body) = after.strip_prefix('{') {
            let line = text[..text.len() - rest.len() + i].matches('\n').count() + 1;
            let end = body
                .find('}')
                .ok_or_else(|| format!("line {line}: `${{` without a closing `}}`"))?;
            let name = &body[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
            if !valid {
                return Err(format!(
                    "line {line}: `${{{name}}}` is not an environment variable reference (letters, digits, `_`); write `$${{` for a literal `${{`"
                ));
            }
            let value = lookup(name).ok_or_else(|| {
                format!("line {line}: environment variable {name} (referenced as `${{{name}}}`) is not set")
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NODE_IP" => Some("10.0.0.5".into()),
            "NODE_NAME" => Some("worker-1".into()),
            _ => None,
        }
    }

    #[test]
    fn braced_references_are_expanded() {
        let t = "node_name: ${NODE_NAME}\nlistener:\n  address: ${NODE_IP}:15001\n";
        assert_eq!(
            expand(t, env).unwrap(),
            "node_name: worker-1\nlistener:\n  address: 10.0.0.5:15001\n"
        );
    }

    #[test]
    fn bare_dollars_and_escapes_are_kept() {
        let t = "tables: [pg$stats, \"$x\", a$]\nd: $${NODE_IP} $";
        assert_eq!(
            expand(t, env).unwrap(),
            "tables: [pg$stats, \"$x\", a$]\nd: ${NODE_IP} $"
        );
    }

    #[test]
    fn unset_or_malformed_references_name_their_line() {
        let e = expand("a: 1\nb: ${MISSING}\n", env).unwrap_err();
        assert_eq!(
            e,
            "line 2: environment variable MISSING (referenced as `${MISSING}`) is not set"
        );
        let e = expand("a: ${NODE IP}", env).unwrap_err();
        assert!(e.starts_with("line 1: `${NODE IP}` is not"), "{e}");
        let e = expand("a: 1\n\n${NODE_IP", env).unwrap_err();
        assert!(e.starts_with("line 3: `${` without"), "{e}");
    }
}
