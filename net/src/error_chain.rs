//! [`ErrorChain`]: an error with its chain of causes, for logs (the engine and the runtime
//! re-export it).

/// Displays an error with its chain of causes, `outer: cause: cause's cause`, each once (for
/// logs and printed reports; error messages name the thing and leave the cause to `source`).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
