//! P3 command templates (pure): argv arrays with `{placeholder}`s, rendered without a shell.
//!
//! Contract:
//! - A template is an argv array; each element renders to zero or more arguments, never by
//!   splitting a value: a value with spaces, quotes or `;` is always exactly one argument
//!   (or part of one), and nothing is ever shell-interpreted.
//! - `{name}` anywhere in an element is replaced by a *scalar* value.
//! - A *list* value (`{env}`: `KEY=VALUE` items; optional values such as `{schedule}` are
//!   lists of zero or one item) may appear at most once in an element; the element is then
//!   emitted once per item, and dropped when the list is empty. So `"--env={env}"` gives
//!   `--env=A=1 --env=B=2`, and `"--schedule={schedule}"` vanishes for a one-off job. Write
//!   flags that take a value as `--flag={value}` for list values.
//! - `{{` and `}}` are literal braces. An unknown placeholder is an error naming it.

use std::collections::BTreeMap;

/// A placeholder's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Exactly one value.
    One(String),
    /// Zero or more values: the element holding it repeats per item.
    Many(Vec<String>),
}

impl Value {
    /// An optional value: a list of zero or one item.
    pub fn optional(v: Option<impl Into<String>>) -> Self {
        Value::Many(v.map(Into::into).into_iter().collect())
    }
}

/// Placeholder values by name.
pub type Values = BTreeMap<String, Value>;

/// Why a template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template names a placeholder that has no value.
    #[error("unknown placeholder {{{name}}} in template element {element:?} (known: {known})")]
    Unknown {
        /// Placeholder name.
        name: String,
        /// The template element.
        element: String,
        /// Names that are known.
        known: String,
    },
    /// A brace that opens or closes nothing.
    #[error(
        "unbalanced brace in template element {element:?} (write {{{{ or }}}} for a literal brace)"
    )]
    Unbalanced {
        /// The template element.
        element: String,
    },
    /// Two list placeholders in one element (their product would be ambiguous).
    #[error("template element {element:?} holds two list placeholders; use one per element")]
    TwoLists {
        /// The template element.
        element: String,
    },
    /// The template is empty.
    #[error("the {0} template is empty: set steps.p3.{0} in the executor config")]
    Empty(String),
}

#[derive(Debug)]
enum Piece<'a> {
    Lit(String),
    Var(&'a str),
}

fn parse(element: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let unbalanced = || TemplateError::Unbalanced {
        element: element.into(),
    };
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = element;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") {
            lit.push('{');
            rest = &rest[2..];
        } else if rest.starts_with("}}") {
            lit.push('}');
            rest = &rest[2..];
        } else if c == '{' {
            let end = rest.find('}').ok_or_else(unbalanced)?;
            let name = &rest[1..end];
            if name.is_empty() || name.contains('{') {
                return Err(unbalanced());
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(name));
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err(unbalanced());
        } else {
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// Check a template against the placeholder names it may use, without values (config check).
pub fn validate(template: &[String], known: &[&str]) -> Result<(), TemplateError> {
    for element in template {
        for piece in parse(element)? {
            if let Piece::Var(name) = piece {
                if !known.contains(&name) {
                    return Err(TemplateError::Unknown {
                        name: name.into(),
                        element: element.clone(),
                        known: known.join(", "),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Render `template` (named `what`, for messages) with `values` into an argv.
pub fn render(
    what: &str,
    template: &[String],
    values: &Values,
) -> Result<Vec<String>, TemplateError> {
    if template.is_empty() {
        return Err(TemplateError::Empty(what.into()));
    }
    let mut argv = Vec::new();
    for element in template {
        let pieces = parse(element)?;
        let mut list: Option<&Vec<String>> = None;
        for piece in &pieces {
            if let Piece::Var(name) = piece {
                match values.get(*name) {
                    None => {
                        return Err(TemplateError::Unknown {
                            name: (*name).into(),
                            element: element.clone(),
                            known: values.keys().cloned().collect::<Vec<_>>().join(", "),
                        });
                    }
                    Some(Value::Many(items)) => {
                        if list.is_some() {
                            return Err(TemplateError::TwoLists {
                                element: element.clone(),
                            });
                        }
                        list = Some(items);
                    }
                    Some(Value::One(_)) => {}
                }
            }
        }
        let fill = |item: Option<&str>| -> String {
            let mut arg = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Lit(s) => arg.push_str(s),
                    Piece::Var(name) => match &values[*name] {
                        Value::One(v) => arg.push_str(v),
                        Value::Many(_) => arg.push_str(item.unwrap_or_default()),
                    },
                }
            }
            arg
        };
        match list {
            None => argv.push(fill(None)),
            Some(items) => argv.extend(items.iter().map(|i| fill(Some(i)))),
        }
    }
    Ok(argv)
}

/// Quote one argument so a reader (or a POSIX shell) sees exactly one word: safe words stay
/// bare, anything else is single-quoted with `'` written as `'\''`.
pub(crate) fn quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// An argv as one unambiguous line.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(elements: &[&str]) -> Vec<String> {
        elements.iter().map(|s| s.to_string()).collect()
    }

    fn values() -> Values {
        let mut v = Values::new();
        v.insert("job".into(), Value::One("nightly".into()));
        v.insert("command".into(), Value::One("python -m x; rm -rf /".into()));
        v.insert("devstage".into(), Value::One("client_prod".into()));
        v.insert(
            "env".into(),
            Value::Many(vec!["A=1".into(), "B=two words".into()]),
        );
        v.insert("schedule".into(), Value::optional(None::<String>));
        v.insert("cpu".into(), Value::optional(Some("2")));
        v
    }

    #[test]
    fn render_table() {
        // (template, expected argv or error fragment)
        type Case<'a> = (&'a [&'a str], Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (&["p3", "deploy", "{job}"], Ok(&["p3", "deploy", "nightly"])),
            (
                &["--name={job}-{devstage}"],
                Ok(&["--name=nightly-client_prod"]),
            ),
            // A value with spaces and `;` stays one argument.
            (
                &["--command", "{command}"],
                Ok(&["--command", "python -m x; rm -rf /"]),
            ),
            (&["--env={env}"], Ok(&["--env=A=1", "--env=B=two words"])),
            (&["--schedule={schedule}", "x"], Ok(&["x"])),
            (&["--cpu={cpu}"], Ok(&["--cpu=2"])),
            (&["{{literal}}"], Ok(&["{literal}"])),
            (&["{nope}"], Err("unknown placeholder {nope}")),
            (&["{job"], Err("unbalanced")),
            (&["job}"], Err("unbalanced")),
            (&["{env}{cpu}"], Err("two list placeholders")),
            (&[], Err("empty")),
        ];
        for (tpl, want) in cases {
            let got = render("deploy", &t(tpl), &values());
            match (want, got) {
                (Ok(w), Ok(argv)) => assert_eq!(argv, t(w), "{tpl:?}"),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{tpl:?}: {e}"),
                (w, g) => panic!("{tpl:?}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn validate_names_the_unknown_placeholder() {
        let err = validate(&t(&["p3", "{jbo}"]), &["job"]).unwrap_err();
        assert!(err.to_string().contains("{jbo}"), "{err}");
        validate(&t(&["p3", "{job}"]), &["job"]).unwrap();
    }

    #[test]
    fn quoting_is_unambiguous() {
        assert_eq!(quote("plain-1.2"), "plain-1.2");
        assert_eq!(quote("a b;c"), "'a b;c'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote_argv(&t(&["p3", "x y"])), "p3 'x y'");
    }
}
