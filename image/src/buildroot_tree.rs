//! Checks a Buildroot br2-external tree (`buildroot-overlay/`) without Buildroot.
//!
//! Buildroot itself only finds most mistakes in such a tree after it has started a build that
//! takes hours, or never (a misspelt option in a defconfig is silently dropped). This check runs
//! in CI instead and reads the tree the way the Buildroot manual ("Keeping customizations outside
//! of Buildroot", "Infrastructure for Cargo-based packages") describes it:
//!
//! - `external.desc` has a `name:` of `[A-Za-z0-9_]` and a `desc:`;
//! - `Config.in` sources every `package/*/Config.in` through `$BR2_EXTERNAL_<NAME>_PATH`, and
//!   each sourced file exists; `external.mk` includes every `package/*/*.mk`;
//! - every package directory has `Config.in` (defining `BR2_PACKAGE_<PKG>`) and `<pkg>.mk`,
//!   whose variables all start with `<PKG>_` and whose last line is `$(eval $(<infra>-package))`;
//! - every line of `configs/*_defconfig` is `BR2_...=value`, `# BR2_... is not set`, a comment or
//!   blank; every path under `$(BR2_EXTERNAL_<NAME>_PATH)` it names exists; every
//!   `BR2_PACKAGE_<PKG>...` symbol it sets for a package of this tree is defined in a Config.in;
//! - every file starting with `#!` is executable and passes `sh -n` (`bash -n` for bash);
//! - every `board/*/genimage*.cfg` parses, and `board/oasis/genimage.cfg` describes the
//!   appliance disk ([`genimage_cfg::check_appliance_layout`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::genimage_cfg;

/// The tree in this repository.
pub const OASIS_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../buildroot-overlay");

/// The genimage configuration that must describe the appliance disk, relative to the tree.
pub const APPLIANCE_GENIMAGE: &str = "board/oasis/genimage.cfg";

/// One thing wrong with the tree: the file (relative to the tree), the line if known, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the tree's root.
    pub file: PathBuf,
    /// 1-based line, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The tree is not valid: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{} is not a valid Buildroot br2-external tree:\n{}", root.display(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct TreeError {
    /// The tree's root.
    pub root: PathBuf,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

/// What a valid tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// `name:` from external.desc.
    pub name: String,
    /// `desc:` from external.desc.
    pub desc: String,
    /// Package directories under `package/`, sorted.
    pub packages: Vec<String>,
    /// Defconfig file names under `configs/`, sorted.
    pub defconfigs: Vec<String>,
}

/// Checks the tree at `root`; returns what it holds, or every problem found.
pub fn check(root: &Path) -> Result<Tree, TreeError> {
    let mut checker = Checker { root: root.to_path_buf(), problems: Vec::new() };
    let tree = checker.run();
    if checker.problems.is_empty() {
        Ok(tree)
    } else {
        Err(TreeError { root: root.to_path_buf(), problems: checker.problems })
    }
}

/// The Kconfig/Makefile name of a package: upper case, `-` as `_`.
pub fn upper_name(package: &str) -> String {
    package.to_ascii_uppercase().replace('-', "_")
}

struct Checker {
    root: PathBuf,
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, file: impl AsRef<Path>, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem { file: file.as_ref().to_path_buf(), line, message: message.into() });
    }

    fn read(&mut self, file: &str) -> Option<String> {
        match fs::read_to_string(self.root.join(file)) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problem(file, None, "missing: every br2-external tree needs it");
                None
            }
            Err(e) => {
                self.problem(file, None, format!("cannot be read: {e}"));
                None
            }
        }
    }

    fn run(&mut self) -> Tree {
        let (name, desc) = self.external_desc();
        let path_var = format!("BR2_EXTERNAL_{name}_PATH");
        let packages = self.list_dirs("package");
        let mut symbols = BTreeSet::new();
        self.config_in(&path_var, &packages, &mut symbols);
        self.external_mk(&path_var, &packages);
        for package in &packages {
            self.package(package, &mut symbols);
        }
        let defconfigs: Vec<String> =
            self.list_files("configs").into_iter().filter(|f| f.ends_with("_defconfig")).collect();
        if defconfigs.is_empty() {
            self.problem("configs", None, "no *_defconfig: the tree must carry the appliance's defconfig");
        }
        for defconfig in &defconfigs {
            self.defconfig(defconfig, &path_var, &packages, &symbols);
        }
        self.scripts();
        self.genimage_configs();
        Tree { name, desc, packages, defconfigs }
    }

    fn list_dirs(&self, dir: &str) -> Vec<String> {
        self.list(dir, true)
    }

    fn list_files(&self, dir: &str) -> Vec<String> {
        self.list(dir, false)
    }

    fn list(&self, dir: &str, dirs: bool) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir() == dirs).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// `name: VALUE` and `desc: VALUE` lines: a keyword, a colon, one or more spaces.
    fn external_desc(&mut self) -> (String, String) {
        const FILE: &str = "external.desc";
        let Some(text) = self.read(FILE) else { return (String::new(), String::new()) };
        let mut fields = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((key, value)) if value.starts_with(' ') && !value.trim().is_empty() => {
                    if key != "name" && key != "desc" {
                        self.problem(
                            FILE,
                            Some(i + 1),
                            format!("unknown keyword `{key}`: Buildroot knows `name` and `desc`"),
                        );
                    }
                    fields.insert(key.to_string(), (i + 1, value.trim().to_string()));
                }
                _ => self.problem(FILE, Some(i + 1), "expected `keyword: value` (a colon, then one or more spaces)"),
            }
        }
        let name = match fields.get("name") {
            None => {
                self.problem(FILE, None, "no `name:` line: Buildroot needs the tree's name");
                String::new()
            }
            Some((line, name)) => {
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.problem(FILE, Some(*line), format!("name `{name}` may only use A-Z, a-z, 0-9 and _"));
                }
                name.clone()
            }
        };
        let desc = match fields.get("desc") {
            None => {
                self.problem(FILE, None, "no `desc:` line: describe the tree in one line (menuconfig shows it)");
                String::new()
            }
            Some((_, desc)) => desc.clone(),
        };
        (name, desc)
    }

    /// Resolves `$VAR/rest` or `$(VAR)/rest` against the tree when VAR is the tree's path variable.
    fn resolve(&self, path: &str, path_var: &str) -> Option<PathBuf> {
        [format!("${path_var}"), format!("$({path_var})"), format!("${{{path_var}}}")]
            .iter()
            .find_map(|prefix| path.strip_prefix(prefix.as_str()))
            .map(|rest| self.root.join(rest.trim_start_matches('/')))
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    /// `source "$BR2_EXTERNAL_<NAME>_PATH/package/X/Config.in"` for every package, each existing;
    /// collects the symbols every Config.in of the tree defines.
    fn config_in(&mut self, path_var: &str, packages: &[String], symbols: &mut BTreeSet<String>) {
        const FILE: &str = "Config.in";
        let Some(text) = self.read(FILE) else { return };
        collect_symbols(&text, symbols);
        let mut sourced = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("source").or_else(|| line.strip_prefix("rsource")) else { continue };
            let target = rest.trim().trim_matches('"');
            match self.resolve(target, path_var) {
                None => self.problem(
                    FILE,
                    Some(i + 1),
                    format!("`{target}` is not under the tree: write it as \"${path_var}/...\" (a relative path is read from Buildroot's own tree)"),
                ),
                Some(path) if !path.is_file() => {
                    self.problem(FILE, Some(i + 1), format!("sources {}, which does not exist", self.relative(&path).display()))
                }
                Some(path) => {
                    sourced.insert(self.relative(&path));
                }
            }
        }
        for package in packages {
            let wanted = Path::new("package").join(package).join("Config.in");
            if !sourced.contains(&wanted) {
                self.problem(
                    FILE,
                    None,
                    format!("does not source {}: add `source \"${path_var}/{}\"`", wanted.display(), wanted.display()),
                );
            }
        }
    }

    /// `include` lines, explicit or `$(wildcard ...)`, that cover every `package/*/*.mk`.
    fn external_mk(&mut self, path_var: &str, packages: &[String]) {
        const FILE: &str = "external.mk";
        let Some(text) = self.read(FILE) else { return };
        let mut included = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let Some(rest) = ["include ", "-include ", "sinclude "].iter().find_map(|p| line.strip_prefix(p)) else {
                continue;
            };
            let rest = rest.trim();
            let patterns: Vec<&str> = match rest.find("$(wildcard ") {
                Some(at) => {
                    let inner = &rest[at + "$(wildcard ".len()..];
                    let end = inner.rfind(')').map(|e| inner[..e].trim_end_matches(')')).unwrap_or(inner);
                    end.split_whitespace().collect()
                }
                None => rest.split_whitespace().collect(),
            };
            for pattern in patterns {
                match self.resolve(pattern, path_var) {
                    None => self.problem(
                        FILE,
                        Some(i + 1),
                        format!("`{pattern}` is not under the tree: write it as $({path_var})/..."),
                    ),
                    Some(path) => {
                        let matches = glob(&path);
                        if matches.is_empty() && !pattern.contains('*') {
                            self.problem(
                                FILE,
                                Some(i + 1),
                                format!("includes {}, which does not exist", self.relative(&path).display()),
                            );
                        }
                        included.extend(matches.iter().map(|m| self.relative(m)));
                    }
                }
            }
        }
        for package in packages {
            for mk in self.list_files(&format!("package/{package}")).into_iter().filter(|f| f.ends_with(".mk")) {
                let wanted = Path::new("package").join(package).join(&mk);
                if !included.contains(&wanted) {
                    self.problem(
                        FILE,
                        None,
                        format!(
                            "does not include {}: add `include $(sort $(wildcard $({path_var})/package/*/*.mk))`",
                            wanted.display()
                        ),
                    );
                }
            }
        }
    }

    fn package(&mut self, package: &str, symbols: &mut BTreeSet<String>) {
        let upper = upper_name(package);
        let config = format!("package/{package}/Config.in");
        if let Some(text) = self.read(&config) {
            let mut own = BTreeSet::new();
            collect_symbols(&text, &mut own);
            if !own.contains(&format!("BR2_PACKAGE_{upper}")) {
                self.problem(
                    &config,
                    None,
                    format!("does not define `config BR2_PACKAGE_{upper}`, the package's own option"),
                );
            }
            symbols.extend(own);
        }
        let mk = format!("package/{package}/{package}.mk");
        let Some(text) = self.read(&mk) else { return };
        let prefix = format!("{upper}_");
        let mut in_define = false;
        let mut continued = false;
        let mut last = None;
        for (i, line) in text.lines().enumerate() {
            let was_continued = continued;
            continued = line.ends_with('\\');
            let trimmed = line.trim();
            if was_continued || trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if in_define {
                in_define = trimmed != "endef";
                continue;
            }
            last = Some((i + 1, trimmed.to_string()));
            let variable = if let Some(rest) = trimmed.strip_prefix("define ") {
                in_define = true;
                Some(rest.trim())
            } else if trimmed.starts_with(|c: char| c.is_ascii_uppercase()) {
                assignment_target(trimmed)
            } else {
                None
            };
            if let Some(variable) = variable {
                if !variable.starts_with(&prefix) {
                    self.problem(
                        &mk,
                        Some(i + 1),
                        format!("variable `{variable}` does not start with {prefix}: Buildroot only reads a package's {prefix}* variables, and others leak into every package"),
                    );
                }
            }
        }
        let is_eval = |l: &str| {
            l.strip_prefix("$(eval $(").and_then(|r| r.strip_suffix("))")).is_some_and(|infra| {
                infra.ends_with("-package") && infra.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
        };
        match last {
            Some((_, ref l)) if is_eval(l) => {}
            Some((line, _)) => self.problem(
                &mk,
                Some(line),
                "the last line must call a package infrastructure, as `$(eval $(cargo-package))`",
            ),
            None => self.problem(&mk, None, "is empty: it must end with `$(eval $(<infra>-package))`"),
        }
    }

    fn defconfig(&mut self, name: &str, path_var: &str, packages: &[String], symbols: &BTreeSet<String>) {
        let file = format!("configs/{name}");
        let Some(text) = self.read(&file) else { return };
        let ours: Vec<String> = packages.iter().map(|p| format!("BR2_PACKAGE_{}", upper_name(p))).collect();
        let mut seen = BTreeMap::new();
        let mut scripts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let at = Some(i + 1);
            let trimmed = line.trim();
            let (symbol, value) = if trimmed.is_empty() {
                continue;
            } else if let Some(comment) = trimmed.strip_prefix('#') {
                match comment.trim().strip_suffix(" is not set") {
                    Some(symbol) if symbol.starts_with("BR2_") => (symbol.to_string(), None),
                    _ => continue,
                }
            } else {
                match parse_defconfig_line(trimmed) {
                    Ok((symbol, value)) => (symbol, Some(value)),
                    Err(message) => {
                        self.problem(&file, at, message);
                        continue;
                    }
                }
            };
            if let Some(first) = seen.insert(symbol.clone(), i + 1) {
                self.problem(
                    &file,
                    at,
                    format!("{symbol} is set again (first on line {first}); Buildroot keeps only one"),
                );
            }
            if ours.iter().any(|o| symbol == *o || symbol.starts_with(&format!("{o}_"))) && !symbols.contains(&symbol) {
                self.problem(
                    &file,
                    at,
                    format!("{symbol} is not defined in any Config.in of this tree; Buildroot would drop it silently"),
                );
            }
            let Some(value) = value else { continue };
            for word in value.split_whitespace() {
                if word.starts_with("$(BR2_EXTERNAL_") && !word.starts_with(&format!("$({path_var})")) {
                    self.problem(&file, at, format!("`{word}` names another tree: this tree's path is $({path_var})"));
                }
                if let Some(path) = self.resolve(word, path_var) {
                    if !path.exists() {
                        self.problem(
                            &file,
                            at,
                            format!(
                                "{symbol} names {}, which does not exist in the tree",
                                self.relative(&path).display()
                            ),
                        );
                    } else if symbol.ends_with("_SCRIPT") {
                        scripts.push((i + 1, symbol.clone(), path));
                    }
                }
            }
        }
        for (line, symbol, path) in scripts {
            if !is_executable(&path) {
                self.problem(
                    &file,
                    Some(line),
                    format!("{symbol} names {}, which is not executable (chmod +x it)", self.relative(&path).display()),
                );
            }
        }
    }

    /// Every file with a shebang is executable and passes `sh -n` (or `bash -n`).
    fn scripts(&mut self) {
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        for path in files {
            let Ok(bytes) = fs::read(&path) else { continue };
            let Some(first) = bytes.split(|b| *b == b'\n').next() else { continue };
            let Some(interpreter) = first.strip_prefix(b"#!") else { continue };
            let interpreter = String::from_utf8_lossy(interpreter);
            let shell = if interpreter.contains("bash") {
                "bash"
            } else if interpreter.trim().ends_with("sh") {
                "sh"
            } else {
                continue;
            };
            let relative = self.relative(&path);
            if !is_executable(&path) {
                self.problem(&relative, None, "is a script but not executable (chmod +x it)");
            }
            match Command::new(shell).arg("-n").arg(&path).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => self.problem(
                    &relative,
                    None,
                    format!("`{shell} -n` finds a syntax error: {}", String::from_utf8_lossy(&out.stderr).trim()),
                ),
                Err(e) => self.problem(&relative, None, format!("cannot run `{shell} -n` on it: {e}")),
            }
        }
    }

    fn genimage_configs(&mut self) {
        for board in self.list_dirs("board") {
            for file in self.list_files(&format!("board/{board}")) {
                if !(file.starts_with("genimage") && file.ends_with(".cfg")) {
                    continue;
                }
                let relative = format!("board/{board}/{file}");
                let Some(text) = self.read(&relative) else { continue };
                match genimage_cfg::parse(&text) {
                    Err(e) => self.problem(&relative, Some(e.line), format!("genimage cannot parse it: {}", e.message)),
                    Ok(config) if relative == APPLIANCE_GENIMAGE => {
                        for p in genimage_cfg::check_appliance_layout(&config) {
                            self.problem(&relative, Some(p.line), p.message);
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        if !self.root.join(APPLIANCE_GENIMAGE).is_file() {
            self.problem(APPLIANCE_GENIMAGE, None, "missing: it describes the appliance disk");
        }
    }
}

/// `config SYMBOL` and `menuconfig SYMBOL` lines.
fn collect_symbols(text: &str, symbols: &mut BTreeSet<String>) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("config" | "menuconfig"), Some(symbol)) = (words.next(), words.next()) {
            symbols.insert(symbol.to_string());
        }
    }
}

/// The variable a make assignment (`X = ...`, `X += ...`, `X := ...`, `X ?= ...`) sets.
fn assignment_target(line: &str) -> Option<&str> {
    let at = line.find('=')?;
    let left = line[..at].trim_end_matches(['+', ':', '?']).trim();
    let left = left.strip_prefix("override ").unwrap_or(left).trim();
    (!left.is_empty() && !left.contains(char::is_whitespace)).then_some(left)
}

/// `BR2_SYMBOL=value` with value `y`, a number, a hex number or a double-quoted string.
pub fn parse_defconfig_line(line: &str) -> Result<(String, String), String> {
    let Some((symbol, value)) = line.split_once('=') else {
        return Err(format!("`{line}` is neither `BR2_...=value`, `# BR2_... is not set` nor a comment"));
    };
    if !symbol.starts_with("BR2_")
        || !symbol[4..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || symbol.len() == 4
    {
        return Err(format!("`{symbol}` is not a Buildroot option name (BR2_ then A-Z, 0-9, _)"));
    }
    if value == "y" || value.parse::<i64>().is_ok() {
        return Ok((symbol.to_string(), value.to_string()));
    }
    if let Some(hex) = value.strip_prefix("0x") {
        if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok((symbol.to_string(), value.to_string()));
        }
    }
    let Some(inner) = value.strip_prefix('"') else {
        return Err(format!("{symbol}: `{value}` is not y, a number or a \"quoted string\""));
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => break,
            },
            '"' => {
                let rest: String = chars.collect();
                return if rest.is_empty() {
                    Ok((symbol.to_string(), out))
                } else {
                    Err(format!("{symbol}: `{rest}` after the closing quote"))
                };
            }
            c => out.push(c),
        }
    }
    Err(format!("{symbol}: the string is never closed (missing `\"`)"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Every regular file under `dir`, not following symlinks.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), files),
            Ok(t) if t.is_file() => files.push(entry.path()),
            _ => {}
        }
    }
}

/// The existing paths a pattern with `*` in some components names (`*` matches within one
/// component, as make's wildcard does), or the path itself if it exists and has no `*`.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for component in pattern.components() {
        let part = component.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &found {
            if part.contains('*') {
                let Ok(entries) = fs::read_dir(if base.as_os_str().is_empty() { Path::new(".") } else { base }) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if wildcard_match(&part, &name) {
                        next.push(base.join(name));
                    }
                }
            } else {
                next.push(base.join(component.as_os_str()));
            }
        }
        found = next;
    }
    let mut found: Vec<PathBuf> = found.into_iter().filter(|p| p.exists()).collect();
    found.sort();
    found
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|skip| {
                    name.is_char_boundary(head.len() + skip) && wildcard_match(tail, &name[head.len() + skip..])
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defconfig_lines() {
        assert_eq!(parse_defconfig_line("BR2_x86_64=y").unwrap(), ("BR2_x86_64".into(), "y".into()));
        assert_eq!(parse_defconfig_line("BR2_A=\"a \\\"b\\\" c\"").unwrap().1, "a \"b\" c");
        assert_eq!(parse_defconfig_line("BR2_A=0x1f").unwrap().1, "0x1f");
        assert_eq!(parse_defconfig_line("BR2_A=42").unwrap().1, "42");
        for bad in ["BR2_A", "BR2_A=yes", "BR2_A=\"open", "BR2_A=\"x\" y", "FOO=y", "BR2_=y", "BR2_A-B=y"] {
            assert!(parse_defconfig_line(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn make_assignments() {
        assert_eq!(assignment_target("OASIS_SITE = x"), Some("OASIS_SITE"));
        assert_eq!(assignment_target("OASIS_HOOKS += X"), Some("OASIS_HOOKS"));
        assert_eq!(assignment_target("OASIS_A := $(B)"), Some("OASIS_A"));
        assert_eq!(assignment_target("OASIS_A ?= 1"), Some("OASIS_A"));
        assert_eq!(assignment_target("$(eval $(cargo-package))"), None);
        assert_eq!(assignment_target("ifeq ($(A),y)"), None);
    }

    #[test]
    fn wildcards_match_within_a_component() {
        assert!(wildcard_match("*.mk", "oasis.mk"));
        assert!(wildcard_match("*", "oasis"));
        assert!(!wildcard_match("*.mk", "Config.in"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b", "ac"));
    }

    #[test]
    fn symbols_from_config_and_menuconfig() {
        let mut symbols = BTreeSet::new();
        collect_symbols(
            "config BR2_PACKAGE_X\n\tbool \"x\"\nmenuconfig BR2_PACKAGE_Y\nif BR2_PACKAGE_X\n",
            &mut symbols,
        );
        assert_eq!(symbols.into_iter().collect::<Vec<_>>(), ["BR2_PACKAGE_X", "BR2_PACKAGE_Y"]);
    }
}
