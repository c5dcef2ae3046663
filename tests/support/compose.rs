//! compose.yaml as compose reads it: its variable interpolation, shared by
//! the cross-checks of the file and the run of its topology.

use std::collections::BTreeMap;

/// Compose's interpolation of `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
/// `${VAR+alt}` and `$$`. A variable that is unset and has no default is an
/// error here (compose would substitute an empty string with a warning).
pub fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let body = &braced[..end];
            rest = &braced[end + 1..];
            let name_len = body.find(|c| !is_name(c)).unwrap_or(body.len());
            let (name, op) = body.split_at(name_len);
            if name.is_empty() {
                return Err(format!("${{{body}}} names no variable in {text:?}"));
            }
            if op.contains(['$', '{']) {
                return Err(format!(
                    "nested interpolation in {text:?}: not checked here"
                ));
            }
            let value = vars.get(name).copied();
            let set_non_empty = value.filter(|v| !v.is_empty());
            let resolved = if op.is_empty() {
                value.ok_or_else(|| format!("${{{name}}} is not set and has no default"))?
            } else if let Some(default) = op.strip_prefix(":-") {
                set_non_empty.unwrap_or(default)
            } else if let Some(default) = op.strip_prefix('-') {
                value.unwrap_or(default)
            } else if let Some(message) = op.strip_prefix(":?") {
                set_non_empty.ok_or_else(|| format!("${{{name}}} is required: {message}"))?
            } else if let Some(message) = op.strip_prefix('?') {
                value.ok_or_else(|| format!("${{{name}}} is required: {message}"))?
            } else if let Some(alt) = op.strip_prefix(":+") {
                if set_non_empty.is_some() { alt } else { "" }
            } else if let Some(alt) = op.strip_prefix('+') {
                if value.is_some() { alt } else { "" }
            } else {
                return Err(format!("unknown interpolation ${{{body}}} in {text:?}"));
            };
            out.push_str(resolved);
        } else {
            let name_len = after.find(|c| !is_name(c)).unwrap_or(after.len());
            if name_len == 0 {
                return Err(format!(
                    "a lone '$' in {text:?}: write $$ for a literal '$'"
                ));
            }
            let name = &after[..name_len];
            rest = &after[name_len..];
            out.push_str(
                vars.get(name)
                    .ok_or_else(|| format!("${name} is not set and has no default"))?,
            );
        }
    }
    out.push_str(rest);
    Ok(out)
}
