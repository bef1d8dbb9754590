//! The appliance's real terminal: the serial console and the screen at once. Everything written
//! goes to both; a line typed on either is read.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use super::terminal::{Input, Terminal};

/// One console device and, for a serial port, its speed.
#[derive(Debug, Clone)]
pub struct ConsoleDevice {
    pub path: PathBuf,
    pub baud: Option<u32>,
}

/// The appliance's consoles: `/dev/ttyS0` at 115200 8N1 and the screen `/dev/tty0`.
pub fn appliance_devices() -> Vec<ConsoleDevice> {
    vec![
        ConsoleDevice { path: "/dev/ttyS0".into(), baud: Some(115_200) },
        ConsoleDevice { path: "/dev/tty0".into(), baud: None },
    ]
}

enum FromReader {
    Line(String),
    Closed,
}

/// Every console that could be opened, as one [`Terminal`].
#[derive(Debug)]
pub struct Consoles {
    outputs: Vec<(PathBuf, File)>,
    lines: Receiver<FromReader>,
    readers: usize,
    closed: usize,
    /// The devices that could not be opened, and why.
    skipped: Vec<String>,
}

fn open_one(device: &ConsoleDevice) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&device.path)?;
    super::sys::set_line_mode(file.as_fd(), device.baud)?;
    Ok(file)
}

impl Consoles {
    /// Opens the appliance's consoles ([`appliance_devices`]).
    pub fn open_appliance() -> io::Result<Consoles> {
        Self::open(&appliance_devices())
    }

    /// Opens every device that exists and can be set to line mode, with one reading thread
    /// each. An error only when none could be opened.
    pub fn open(devices: &[ConsoleDevice]) -> io::Result<Consoles> {
        let (sender, lines) = mpsc::channel();
        let mut outputs = Vec::new();
        let mut skipped = Vec::new();
        for device in devices {
            let file = match open_one(device) {
                Ok(file) => file,
                Err(e) => {
                    skipped.push(format!("{}: {e}", device.path.display(), e = oasis_proto::error_chain(&e)));
                    continue;
                }
            };
            let reader = file.try_clone()?;
            let sender = sender.clone();
            let name = format!("console {}", device.path.display());
            std::thread::Builder::new().name(name).spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = line.trim_end_matches(['\n', '\r']).to_string();
                            if sender.send(FromReader::Line(text)).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sender.send(FromReader::Closed);
            })?;
            outputs.push((device.path.clone(), file));
        }
        if outputs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no console could be opened: {}", skipped.join("; ")),
            ));
        }
        let readers = outputs.len();
        Ok(Consoles { outputs, lines, readers, closed: 0, skipped })
    }

    /// The devices in use.
    pub fn devices(&self) -> Vec<&Path> {
        self.outputs.iter().map(|(path, _)| path.as_path()).collect()
    }

    /// Drops the lines typed so far and not yet read.
    pub fn discard_typed(&mut self) {
        while let Ok(message) = self.lines.try_recv() {
            if let FromReader::Closed = message {
                self.closed += 1;
            }
        }
    }

    /// The devices that could not be opened, each with the reason.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

impl Terminal for Consoles {
    /// Writes to every console; fails only when every one fails.
    fn write(&mut self, text: &str) -> io::Result<()> {
        let mut last_error = None;
        let mut written = false;
        for (path, file) in &mut self.outputs {
            match file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
                Ok(()) => written = true,
                Err(e) => last_error = Some(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        }
        match (written, last_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn read_line_within(&mut self, timeout: Duration) -> io::Result<Input> {
        loop {
            if self.closed == self.readers {
                return Ok(Input::Closed);
            }
            match self.lines.recv_timeout(timeout) {
                Ok(FromReader::Line(line)) => return Ok(Input::Line(line)),
                Ok(FromReader::Closed) => self.closed += 1,
                Err(RecvTimeoutError::Timeout) => return Ok(Input::Nothing),
                Err(RecvTimeoutError::Disconnected) => return Ok(Input::Closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::console::sys::open_pty;

    /// Reads from a pseudo-terminal's controlling side until `want` has arrived.
    fn read_until(master: &mut File, want: &str) -> String {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains(want) {
            let n = master.read(&mut buf).unwrap();
            assert!(n > 0, "the terminal closed; seen so far: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen
    }

    #[test]
    fn writes_go_to_every_console_and_lines_come_from_any() {
        let (mut serial, serial_path) = open_pty().unwrap();
        let (mut screen, screen_path) = open_pty().unwrap();
        let mut consoles = Consoles::open(&[
            ConsoleDevice { path: serial_path.clone(), baud: Some(115_200) },
            ConsoleDevice { path: "/dev/oasis-no-such-console".into(), baud: None },
            ConsoleDevice { path: screen_path.clone(), baud: None },
        ])
        .unwrap();
        assert_eq!(consoles.devices(), [serial_path.as_path(), screen_path.as_path()]);
        assert_eq!(consoles.skipped().len(), 1);
        assert!(consoles.skipped()[0].contains("/dev/oasis-no-such-console"), "{:?}", consoles.skipped());

        consoles.write("Rack interface [eth0]: ").unwrap();
        read_until(&mut serial, "Rack interface [eth0]: ");
        read_until(&mut screen, "Rack interface [eth0]: ");
        consoles.write("two\nlines\n").unwrap();
        assert!(read_until(&mut serial, "lines\r\n").contains("two\r\nlines\r\n"), "NL is written as CR NL");

        // A carriage return, as a serial terminal's Enter sends, ends the line too.
        serial.write_all(b"eth1\r").unwrap();
        assert!(read_until(&mut serial, "eth1").contains("eth1"), "typed text is echoed");
        assert_eq!(consoles.read_line_within(Duration::from_secs(10)).unwrap(), Input::Line("eth1".into()));
        screen.write_all(b"yes\n").unwrap();
        assert_eq!(consoles.read_line().unwrap().as_deref(), Some("yes"));
        assert_eq!(consoles.read_line_within(Duration::from_millis(10)).unwrap(), Input::Nothing);
    }

    #[test]
    fn lines_typed_before_are_discarded_and_closed_readers_still_counted() {
        let (sender, lines) = mpsc::channel();
        let mut consoles = Consoles { outputs: vec![], lines, readers: 2, closed: 0, skipped: vec![] };
        sender.send(FromReader::Line("r".into())).unwrap();
        sender.send(FromReader::Closed).unwrap();
        sender.send(FromReader::Line("yes".into())).unwrap();
        consoles.discard_typed();
        assert_eq!(consoles.read_line_within(Duration::from_millis(1)).unwrap(), Input::Nothing);
        sender.send(FromReader::Line("p".into())).unwrap();
        assert_eq!(consoles.read_line_within(Duration::from_secs(10)).unwrap(), Input::Line("p".into()));
        sender.send(FromReader::Closed).unwrap();
        assert_eq!(consoles.read_line_within(Duration::from_secs(10)).unwrap(), Input::Closed);
    }

    #[test]
    fn no_console_at_all_is_an_error() {
        let err =
            Consoles::open(&[ConsoleDevice { path: "/dev/oasis-no-such-console".into(), baud: None }]).unwrap_err();
        assert!(err.to_string().contains("no console could be opened"), "{err}");
    }
}
