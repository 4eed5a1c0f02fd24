//! Request priorities, a leaf, numbered as Triton numbers them: 1 is the highest, 10 the
//! lowest. A request takes its own (Triton's `priority` parameter), else its key's default,
//! else 5. A replica's queue serves higher priorities first, and lets lower ones fill less of
//! it, so that under overload they are refused first.

/// One of the levels, 1 (the highest) to [`Priority::LEVELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    pub const LEVELS: u8 = 10;
    pub const HIGHEST: Priority = Priority(1);
    pub const LOWEST: Priority = Priority(Priority::LEVELS);
    pub const DEFAULT: Priority = Priority(5);

    /// The level `level`, or `None` outside 1 to [`Priority::LEVELS`].
    pub fn new(level: u64) -> Option<Priority> {
        (1..=u64::from(Priority::LEVELS))
            .contains(&level)
            .then_some(Priority(level as u8))
    }

    /// A request's level as Triton's parameter gives it: 0 is "none given", a level past the
    /// lowest is the lowest.
    pub fn from_parameter(level: u64) -> Option<Priority> {
        match level {
            0 => None,
            level => Some(Priority::new(level).unwrap_or(Priority::LOWEST)),
        }
    }

    pub fn level(self) -> u8 {
        self.0
    }

    /// 0 for the highest, `LEVELS - 1` for the lowest.
    pub fn index(self) -> usize {
        usize::from(self.0 - 1)
    }

    /// The part of a replica's queue requests of this priority may fill: all of it for the
    /// highest, down to half for the lowest.
    pub fn queue_share(self) -> f64 {
        1.0 - f64::from(self.0 - 1) / (2.0 * f64::from(Priority::LEVELS - 1))
    }
}

impl Default for Priority {
    fn default() -> Priority {
        Priority::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_run_from_one_and_lower_ones_get_less_of_the_queue() {
        assert_eq!(Priority::new(0), None);
        assert_eq!(Priority::new(11), None);
        assert_eq!(Priority::from_parameter(0), None);
        assert_eq!(Priority::from_parameter(99), Some(Priority::LOWEST));
        assert_eq!(Priority::HIGHEST.queue_share(), 1.0);
        assert_eq!(Priority::LOWEST.queue_share(), 0.5);
        let shares: Vec<f64> = (1..=10)
            .map(|level| Priority::new(level).unwrap().queue_share())
            .collect();
        assert!(
            shares.windows(2).all(|pair| pair[0] > pair[1]),
            "{shares:?}"
        );
    }
}
