//! `SP_TASK_SYNC_BANDWIDTH` and `SP_TASK_SYNC_BANDWIDTH_TZ`: the download cap's timetable
//! (`crate::bandwidth`), read with the other variables so that a mistake in it is
//! reported with theirs, before any network call.

use crate::bandwidth::{Offset, Timetable};
use crate::env::{ConfigError, Env};

const VAR: &str = "SP_TASK_SYNC_BANDWIDTH";
const TZ_VAR: &str = "SP_TASK_SYNC_BANDWIDTH_TZ";

/// The timetable (no cap when unset); every bad part of either variable is pushed to
/// `errors`, each naming its variable and the part.
pub(super) fn from_env(env: &Env, errors: &mut Vec<ConfigError>) -> Timetable {
    let timetable = env.get(VAR).map(|raw| {
        Timetable::parse(raw).unwrap_or_else(|problems| {
            for problem in problems {
                errors.push(ConfigError::new(VAR, Some(raw), problem.to_string()));
            }
            Timetable::off()
        })
    });
    let offset = match env.get(TZ_VAR) {
        None => Offset::default(),
        Some(raw) => Offset::parse(raw).unwrap_or_else(|e| {
            errors.push(ConfigError::new(TZ_VAR, Some(raw), e.to_string()));
            Offset::default()
        }),
    };
    timetable.map_or_else(Timetable::off, |t| t.in_offset(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandwidth::Cap;

    fn read(pairs: &[(&str, &str)]) -> (Timetable, Vec<String>) {
        let mut errors = Vec::new();
        let timetable = from_env(&Env::from_pairs(pairs.iter().copied()), &mut errors);
        (timetable, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn unset_is_no_cap() {
        assert_eq!(read(&[]), (Timetable::off(), vec![]));
        assert_eq!(read(&[(VAR, "  ")]), (Timetable::off(), vec![]));
    }

    #[test]
    fn the_offset_applies_to_the_timetable() {
        let (timetable, errors) = read(&[(VAR, "08:00,2MiB/s 18:00,off"), (TZ_VAR, "+01:00")]);
        assert!(errors.is_empty(), "{errors:?}");
        // 2024-01-01T07:30:00Z is 08:30 in UTC+01:00.
        assert_eq!(
            timetable.cap_at(1_704_094_200),
            Cap::BytesPerSecond(2 << 20)
        );
        assert!(timetable
            .to_string()
            .ends_with("(times of day in UTC+01:00)"));
    }

    #[test]
    fn each_bad_part_names_its_variable_and_the_part() {
        let (timetable, errors) = read(&[
            (VAR, "Mon-08:00,2MiB/s 18:00,10Mbit/s"),
            (TZ_VAR, "Europe/Prague"),
        ]);
        assert!(timetable.is_off());
        assert_eq!(errors.len(), 3, "{errors:?}");
        let table = "SP_TASK_SYNC_BANDWIDTH=\"Mon-08:00,2MiB/s 18:00,10Mbit/s\": ";
        assert!(
            errors[0].starts_with(&format!("{table}\"Mon-08:00\" names a day of the week")),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with(&format!("{table}\"10Mbit/s\" is in bits")),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].starts_with(
                "SP_TASK_SYNC_BANDWIDTH_TZ=\"Europe/Prague\": \"Europe/Prague\" is not a fixed offset"
            ),
            "{}",
            errors[2]
        );
    }
}
