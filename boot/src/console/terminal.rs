//! What the console dialogues talk to: text out, lines in.

use std::io;
use std::time::Duration;

/// What waiting for a line brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line, without its line ending.
    Line(String),
    /// Nothing typed in the time given.
    Nothing,
    /// No console can be read any more.
    Closed,
}

/// A line-based terminal.
pub trait Terminal {
    /// Writes text as it is (the caller puts the line endings).
    fn write(&mut self, text: &str) -> io::Result<()>;

    /// Waits at most `timeout` for a line.
    fn read_line_within(&mut self, timeout: Duration) -> io::Result<Input>;

    /// Waits for a line; `None` once no console can be read any more.
    fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            match self.read_line_within(Duration::from_secs(3600))? {
                Input::Line(line) => return Ok(Some(line)),
                Input::Closed => return Ok(None),
                Input::Nothing => {}
            }
        }
    }
}

/// A terminal that answers from a script and records what was written: for the dialogues'
/// unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct ScriptedTerminal {
    pub answers: std::collections::VecDeque<String>,
    pub output: String,
    /// Set when the script has run out (the status loop's tests stop on it).
    pub on_exhausted: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

#[cfg(test)]
impl ScriptedTerminal {
    pub fn new(answers: &[&str]) -> Self {
        Self { answers: answers.iter().map(|a| a.to_string()).collect(), ..Self::default() }
    }
}

#[cfg(test)]
impl Terminal for ScriptedTerminal {
    fn write(&mut self, text: &str) -> io::Result<()> {
        self.output.push_str(text);
        Ok(())
    }

    fn read_line_within(&mut self, _timeout: Duration) -> io::Result<Input> {
        match self.answers.pop_front() {
            Some(line) => {
                // Echo, as a terminal in canonical mode does, so the transcript reads naturally.
                self.output.push_str(&line);
                self.output.push('\n');
                Ok(Input::Line(line))
            }
            None => {
                if let Some(flag) = &self.on_exhausted {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Ok(Input::Nothing);
                }
                Ok(Input::Closed)
            }
        }
    }
}
