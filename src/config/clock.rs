//! `[clock]`: what to do with readings stamped with the receive time while
//! the system clock is not synchronised (see `src/store/clock_hold.rs`).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClock {
    hold_unsynced: Option<bool>,
    earlier_boot: Option<EarlierBoot>,
    earlier_boot_wait: Option<Spanned<String>>,
}

/// Readings of an earlier boot that never saw a synchronised clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlierBoot {
    /// Forward them with their time as it was and `timeEstimated: true`.
    Forward,
    /// Keep them aside as dead letters (`dead-letters retry` sends them).
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClockConfig {
    /// Hold receive-time readings until the kernel says the clock is
    /// synchronised (NTP via timesyncd or chrony). Off only where nothing
    /// ever sets the kernel's NTP status (the readings would wait forever).
    pub hold_unsynced: bool,
    pub earlier_boot: EarlierBoot,
    /// How long after start readings of an earlier boot wait before
    /// `earlier_boot` applies.
    pub earlier_boot_wait: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            hold_unsynced: true,
            earlier_boot: EarlierBoot::Forward,
            earlier_boot_wait: Duration::from_secs(3600),
        }
    }
}

impl RawClock {
    pub(crate) fn validate(self, ctx: &mut Ctx) -> ClockConfig {
        let d = ClockConfig::default();
        ClockConfig {
            hold_unsynced: self.hold_unsynced.unwrap_or(d.hold_unsynced),
            earlier_boot: self.earlier_boot.unwrap_or(d.earlier_boot),
            earlier_boot_wait: ctx.duration(
                "clock.earlier_boot_wait",
                &self.earlier_boot_wait,
                d.earlier_boot_wait,
                "1h",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Environment};

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn hostname(&self) -> Option<String> {
            Some("h".into())
        }
    }

    #[test]
    fn defaults_values_and_problems() {
        let c = parse("", Path::new("g.toml"), &NoEnv).unwrap();
        assert_eq!(c.clock, ClockConfig::default());
        let c = parse(
            "[clock]\nhold_unsynced = false\nearlier_boot = \"keep\"\nearlier_boot_wait = \"10m\"\n",
            Path::new("g.toml"),
            &NoEnv,
        )
        .unwrap();
        assert!(!c.clock.hold_unsynced);
        assert_eq!(c.clock.earlier_boot, EarlierBoot::Keep);
        assert_eq!(c.clock.earlier_boot_wait, Duration::from_secs(600));
        let e = parse(
            "[clock]\nearlier_boot_wait = \"soon\"\n",
            Path::new("g.toml"),
            &NoEnv,
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "clock.earlier_boot_wait");
        assert_eq!(e.problems[0].line, Some(2));
        let e = parse(
            "[clock]\nearlier_boot = \"drop\"\n",
            Path::new("g.toml"),
            &NoEnv,
        )
        .unwrap_err();
        assert!(e.problems[0].message.contains("`forward`, `keep`"), "{e}");
    }
}
