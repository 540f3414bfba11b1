//! Permission profiles: which services, and which of their tools, an agent may use. A profile
//! is an allow-list; anything it does not name is denied. An agent without a profile may use
//! every configured service and tool — on its own user's connections only.

use crate::store::{Profile, ProfileRule};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// `SERVICE` or `SERVICE:TOOL_GLOB[,TOOL_GLOB...]` (as `profile add --allow` takes it, and as
/// `describe` writes it, so a rule read back from a profile parses to itself).
pub fn parse_rule(s: &str) -> Result<ProfileRule, String> {
    let (service, globs) = match s.split_once(':') {
        Some((svc, globs)) => (svc, Some(globs)),
        None => (s, None),
    };
    let name_ok = |x: &str, extra: &[u8]| {
        !x.is_empty()
            && x.len() <= 128
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
    };
    if !name_ok(service, b"") {
        return Err(format!("{s:?}: a rule is SERVICE or SERVICE:TOOL_GLOB"));
    }
    let Some(globs) = globs else {
        return Ok(ProfileRule {
            service: service.into(),
            tools: Vec::new(),
        });
    };
    let tools: Vec<String> = globs.split(',').map(str::to_owned).collect();
    if !tools.iter().all(|g| name_ok(g, b"*?/")) {
        return Err(format!(
            "{s:?}: tool globs use letters, digits, - _ . / and the wildcards * ?, separated by commas"
        ));
    }
    Ok(ProfileRule {
        service: service.into(),
        tools,
    })
}

/// A rule as `profile add --allow` takes it: `SERVICE` or `SERVICE:GLOB,GLOB` (`parse_rule`
/// reads it back).
pub fn describe(rule: &ProfileRule) -> String {
    if rule.tools.is_empty() {
        rule.service.clone()
    } else {
        format!("{}:{}", rule.service, rule.tools.join(","))
    }
}

/// Merges rules for the same service (an empty tool list means every tool).
pub fn merge(rules: Vec<ProfileRule>) -> Vec<ProfileRule> {
    let mut out: Vec<ProfileRule> = Vec::new();
    for r in rules {
        match out.iter_mut().find(|x| x.service == r.service) {
            Some(x) if x.tools.is_empty() || r.tools.is_empty() => x.tools.clear(),
            Some(x) => x.tools.extend(r.tools),
            None => out.push(r),
        }
    }
    out
}

pub fn service_allowed(profile: Option<&Profile>, service: &str) -> Decision {
    match profile {
        None => Decision::Allow,
        Some(p) if p.rules.iter().any(|r| r.service == service) => Decision::Allow,
        Some(p) => Decision::Deny(format!(
            "profile {} does not allow service {service}",
            p.name
        )),
    }
}

pub fn tool_allowed(profile: Option<&Profile>, service: &str, tool: &str) -> Decision {
    let Some(p) = profile else {
        return Decision::Allow;
    };
    let allowed =
        p.rules.iter().filter(|r| r.service == service).any(|r| {
            r.tools.is_empty() || r.tools.iter().any(|g| glob(g.as_bytes(), tool.as_bytes()))
        });
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(format!(
            "profile {} does not allow tool {tool} of {service}",
            p.name
        ))
    }
}

/// `*` matches any run, `?` one byte; everything else literally. Iterative with one
/// backtrack point, so no input can make it slow.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(rules: &[&str]) -> Profile {
        Profile {
            id: "p".into(),
            name: "readonly".into(),
            rules: merge(rules.iter().map(|r| parse_rule(r).unwrap()).collect()),
            created: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("read_*", "read_file", true),
            ("read_*", "write_file", false),
            ("*", "x", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*_file", "read_file", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
        // No exponential blow-up.
        assert!(!glob(
            "*a*a*a*a*a*a*a*a*b".as_bytes(),
            "a".repeat(5000).as_bytes()
        ));
    }

    #[test]
    fn profiles_allow_only_what_they_name() {
        let p = profile(&["files:read_*", "files:list", "search"]);
        assert_eq!(service_allowed(Some(&p), "files"), Decision::Allow);
        assert!(matches!(
            service_allowed(Some(&p), "mail"),
            Decision::Deny(_)
        ));
        assert_eq!(
            tool_allowed(Some(&p), "files", "read_file"),
            Decision::Allow
        );
        assert_eq!(tool_allowed(Some(&p), "files", "list"), Decision::Allow);
        assert!(matches!(
            tool_allowed(Some(&p), "files", "write_file"),
            Decision::Deny(_)
        ));
        assert_eq!(
            tool_allowed(Some(&p), "search", "anything"),
            Decision::Allow
        );
        assert_eq!(tool_allowed(None, "files", "write_file"), Decision::Allow);
        // A whole-service rule absorbs tool rules for that service.
        assert!(
            profile(&["files:read_*", "files"]).rules[0]
                .tools
                .is_empty()
        );
    }

    #[test]
    fn rules_are_validated() {
        for bad in [
            "",
            ":x",
            "files:",
            "fi les",
            "files:rm -rf",
            "files:a,",
            "files:,a",
            "files:a,,b",
            "files:a;b",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad:?}");
        }
    }

    /// Regression: the console pre-fills a profile's rules as `describe` writes them; a
    /// service with several globs (`files:read_*,list_*`) must parse back to the same rule.
    #[test]
    fn described_rules_parse_back_to_themselves() {
        let p = profile(&["files:read_*", "files:list_*", "search", "mail:get?"]);
        assert_eq!(p.rules.len(), 3, "same-service rules are merged");
        for rule in &p.rules {
            assert_eq!(parse_rule(&describe(rule)).as_ref(), Ok(rule));
        }
        assert_eq!(
            parse_rule("files:read_*,list_*").unwrap().tools,
            ["read_*", "list_*"]
        );
    }
}
