//! Writing to the terminal: plain lines, and a progress line that is
//! redrawn in place on a terminal and printed once per change otherwise.

use std::io::{IsTerminal, Write};

use crate::error::Error;

/// Standard output and error, with the state of the progress line.
pub struct Output {
    stdout: Box<dyn Write>,
    stderr: Box<dyn Write>,
    /// Stdout is a terminal: redraw the progress line in place.
    tty: bool,
    /// The progress line shown last, to print only changes.
    last_progress: Option<String>,
    /// A redrawn line is on screen without its newline.
    line_open: bool,
}

impl Output {
    /// Output to this process's stdout and stderr.
    pub fn new() -> Output {
        let tty = std::io::stdout().is_terminal();
        Output::to(
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            tty,
        )
    }

    /// Output to the given writers; `tty` as if stdout were a terminal.
    pub fn to(stdout: Box<dyn Write>, stderr: Box<dyn Write>, tty: bool) -> Output {
        Output {
            stdout,
            stderr,
            tty,
            last_progress: None,
            line_open: false,
        }
    }

    /// Prints `text` on stdout as whole lines.
    pub fn line(&mut self, text: &str) -> Result<(), Error> {
        self.close_line()?;
        writeln!(self.stdout, "{text}").map_err(Error::WriteOutput)
    }

    /// Prints `text` on stderr as whole lines.
    pub fn error_line(&mut self, text: &str) -> Result<(), Error> {
        self.close_line()?;
        writeln!(self.stderr, "{text}").map_err(Error::WriteOutput)
    }

    /// Shows the progress line `text` unless it is the one shown already.
    pub fn progress(&mut self, text: &str) -> Result<(), Error> {
        if self.last_progress.as_deref() == Some(text) {
            return Ok(());
        }
        if self.tty {
            // Back to the line's start, then erase what a longer previous
            // line left to the right.
            write!(self.stdout, "\r{text}\x1b[K").map_err(Error::WriteOutput)?;
            self.line_open = true;
        } else {
            writeln!(self.stdout, "{text}").map_err(Error::WriteOutput)?;
        }
        // Shown now, not when a buffer fills: someone is watching it.
        self.stdout.flush().map_err(Error::WriteOutput)?;
        self.last_progress = Some(text.to_string());
        Ok(())
    }

    /// Ends a redrawn line so that what follows starts on its own line.
    fn close_line(&mut self) -> Result<(), Error> {
        if std::mem::take(&mut self.line_open) {
            writeln!(self.stdout).map_err(Error::WriteOutput)?;
        }
        Ok(())
    }
}

impl Default for Output {
    fn default() -> Self {
        Output::new()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.borrow()).into_owned()
        }
    }

    #[test]
    fn progress_is_redrawn_on_a_terminal_and_printed_per_change_elsewhere() {
        let cases = [
            (
                true,
                "\rPending\x1b[K\rMigrating 4%\x1b[K\nSucceeded\n",
                "failed\n",
            ),
            (false, "Pending\nMigrating 4%\nSucceeded\n", "failed\n"),
        ];
        for (tty, want_out, want_err) in cases {
            let (stdout, stderr) = (Shared::default(), Shared::default());
            let mut out = Output::to(Box::new(stdout.clone()), Box::new(stderr.clone()), tty);
            for step in ["Pending", "Pending", "Migrating 4%", "Migrating 4%"] {
                out.progress(step).expect("written");
            }
            out.line("Succeeded").expect("written");
            out.error_line("failed").expect("written");
            assert_eq!(stdout.text(), want_out, "tty {tty}");
            assert_eq!(stderr.text(), want_err, "tty {tty}");
        }
    }

    #[test]
    fn an_error_after_a_redrawn_line_starts_on_a_new_line() {
        let (stdout, stderr) = (Shared::default(), Shared::default());
        let mut out = Output::to(Box::new(stdout.clone()), Box::new(stderr.clone()), true);
        out.progress("Migrating").expect("written");
        out.error_line("Failed: x").expect("written");
        assert_eq!(stdout.text(), "\rMigrating\x1b[K\n");
        assert_eq!(stderr.text(), "Failed: x\n");
    }
}
