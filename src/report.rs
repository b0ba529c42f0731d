//! How an error reaches a user: its own message, then each cause's, joined by ": ".
//!
//! One style for every error of the crate: `Display` says what failed at that level,
//! and the error that caused it is its `source()`, never formatted into its message. A
//! wrapper that adds nothing (an `Auth` that is just the platform's answer) shows its
//! inner error and hands on that error's source. Wherever a message is printed for a
//! user (a log line, `check`'s output, the last words before an exit) it goes through
//! [`Report`], which joins the chain, so the user reads the whole story on one line.

use std::error::Error;
use std::fmt;

/// An error and its causes, for printing.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// An error shown with its causes wherever generic code prints it with `Display` (the
/// retry loop's log lines).
#[derive(Debug)]
pub struct Chained<E>(pub E);

impl<E: Error + 'static> fmt::Display for Chained<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Report(&self.0).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot write x.part")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_is_joined() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(Report(&e).to_string(), "cannot write x.part: disk full");
        let alone = std::io::Error::other("alone");
        assert_eq!(Report(&alone).to_string(), "alone");
    }
}
