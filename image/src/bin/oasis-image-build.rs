//! Builds oasis boot assets from Debian parts until `oasis image build` exists.
//!
//! ```text
//! oasis-image-build [--cache DIR] ipxe OUT
//! oasis-image-build [--cache DIR] test-payload OUT
//! ```
//!
//! `--cache` defaults to `.cache/debian` in the current directory.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: oasis-image-build [--cache DIR] (ipxe | test-payload) OUT";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("error: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Build(e)) => {
            eprint!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprint!(": {s}");
                source = s.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

enum Error {
    Usage(String),
    Build(Box<dyn std::error::Error>),
}

fn run(args: Vec<String>) -> Result<(), Error> {
    let mut cache = PathBuf::from(".cache/debian");
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cache" => cache = args.next().ok_or_else(|| Error::Usage("--cache needs a directory".into()))?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            a if a.starts_with('-') => return Err(Error::Usage(format!("unknown option {a}"))),
            _ => positional.push(arg),
        }
    }
    let [what, out] = positional.as_slice() else {
        return Err(Error::Usage("expected what to build and an output directory".into()));
    };
    let out = PathBuf::from(out);
    let manifest = match what.as_str() {
        "ipxe" => oasis_image::ipxe::build_ipxe(&cache, &out).map_err(|e| Error::Build(e.into()))?,
        "test-payload" => oasis_image::payload::build_test_payload(&cache, &out).map_err(|e| Error::Build(e.into()))?,
        other => return Err(Error::Usage(format!("unknown artifact {other}"))),
    };
    for entry in manifest.entries() {
        let size = std::fs::metadata(out.join(&entry.name)).map(|m| m.len()).unwrap_or(0);
        println!("{}  {:>10} bytes  {}", entry.sha256, size, out.join(&entry.name).display());
    }
    println!("wrote {}", manifest.path().display());
    Ok(())
}
