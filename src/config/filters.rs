//! The six task filters (`SP_TASK_SYNC_SKILLS_*`, `SP_TASK_SYNC_HASHTAGS_*`), checked
//! and sent to the platform as they are.

use crate::env::{ConfigError, Env};

/// The six task filters, sent to the platform as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub skills_must: Vec<String>,
    pub skills_should: Vec<String>,
    pub skills_must_not: Vec<String>,
    pub hashtags_must: Vec<String>,
    pub hashtags_should: Vec<String>,
    pub hashtags_must_not: Vec<String>,
}

impl Filters {
    /// Reads the six filter variables; every mistake is pushed to `errors`.
    pub(super) fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Filters {
        Filters {
            skills_must: parse_skills(env, "SP_TASK_SYNC_SKILLS_MUST", errors),
            skills_should: parse_skills(env, "SP_TASK_SYNC_SKILLS_SHOULD", errors),
            skills_must_not: parse_skills(env, "SP_TASK_SYNC_SKILLS_MUSTNOT", errors),
            hashtags_must: parse_hashtags(env, "SP_TASK_SYNC_HASHTAGS_MUST", errors),
            hashtags_should: parse_hashtags(env, "SP_TASK_SYNC_HASHTAGS_SHOULD", errors),
            hashtags_must_not: parse_hashtags(env, "SP_TASK_SYNC_HASHTAGS_MUSTNOT", errors),
        }
    }
}

fn list(env: &Env, var: &str) -> Vec<String> {
    env.get(var)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_skills(env: &Env, var: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let skills = list(env, var);
    for s in &skills {
        let n = s.chars().count();
        if n > 4 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(ConfigError::new(
                var,
                Some(s),
                "a skill id is 1 to 4 characters, without spaces",
            ));
        }
    }
    skills
}

fn parse_hashtags(env: &Env, var: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let tags = list(env, var);
    for t in &tags {
        let (uuid, value) = match t.split_once(':') {
            Some((u, v)) => (u, Some(v)),
            None => (t.as_str(), None),
        };
        if !is_type1_uuid(uuid) {
            errors.push(ConfigError::new(
                var,
                Some(t),
                "a hashtag is a type-1 UUID (xxxxxxxx-xxxx-1xxx-xxxx-xxxxxxxxxxxx), optionally followed by :value",
            ));
        } else if value == Some("") {
            errors.push(ConfigError::new(
                var,
                Some(t),
                "the value after ':' is empty",
            ));
        }
    }
    tags
}

/// `xxxxxxxx-xxxx-1xxx-[89ab]xxx-xxxxxxxxxxxx`, hex digits in either case.
pub fn is_type1_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
        && groups[2].starts_with('1')
        && matches!(
            groups[3].as_bytes()[0].to_ascii_lowercase(),
            b'8' | b'9' | b'a' | b'b'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashtags() {
        assert!(is_type1_uuid("1d4de98c-c130-11ef-9cd2-0242ac120002"));
        assert!(!is_type1_uuid("1d4de98c-c130-41ef-9cd2-0242ac120002"));
        assert!(!is_type1_uuid("1d4de98c-c130-11ef-9cd2-0242ac12000"));
    }
}
