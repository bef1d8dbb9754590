//! genimage configuration files (the libconfuse syntax genimage reads) and the appliance disk
//! layout one of them must describe.
//!
//! The parser covers what genimage configurations use: sections with and without a title
//! (`image NAME { ... }`, `hdimage { ... }`), options (`key = value`, `key = {"a", "b"}`),
//! double-quoted strings and the three comment forms (`#`, `//`, `/* */`). It exists so that CI
//! can check `buildroot-overlay/board/oasis/genimage.cfg` without Buildroot; genimage itself
//! remains the authority (and the post-image test runs it).

use std::fmt;

/// A section: `kind title { options and sections }`; the file itself is a section without kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// `image`, `partition`, `hdimage`, ... (empty for the file).
    pub kind: String,
    /// The name after the kind, if any: `image disk.img {` has title `disk.img`.
    pub title: Option<String>,
    /// `key = value` options in file order.
    pub options: Vec<(String, Value)>,
    /// Nested sections in file order.
    pub sections: Vec<Section>,
    /// 1-based line of the section's opening.
    pub line: usize,
}

/// An option's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A bare word or a quoted string, unquoted.
    Scalar(String),
    /// `{ a, b, ... }`.
    List(Vec<String>),
}

/// A syntax error, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Section {
    /// The value of option `key` as a scalar, if set.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().rev().find_map(|(k, v)| match v {
            Value::Scalar(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    /// Nested sections of one kind.
    pub fn sections_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections.iter().filter(move |s| s.kind == kind)
    }

    /// The `image` section titled `name`.
    pub fn image(&self, name: &str) -> Option<&Section> {
        self.sections_of("image").find(|s| s.title.as_deref() == Some(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Open,
    Close,
    Equals,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let start = line;
                i += 2;
                loop {
                    match chars.get(i) {
                        None => return Err(ParseError { line: start, message: "comment `/*` is never closed".into() }),
                        Some('*') if chars.get(i + 1) == Some(&'/') => {
                            i += 2;
                            break;
                        }
                        Some('\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            '{' | '}' | '=' | ',' => {
                let token = match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    '=' => Token::Equals,
                    _ => Token::Comma,
                };
                tokens.push((token, line));
                i += 1;
            }
            '"' => {
                let start = line;
                let mut word = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(ParseError {
                                line: start,
                                message: "string is never closed (missing `\"`)".into(),
                            })
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') if i + 1 < chars.len() => {
                            word.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                            i += 1;
                        }
                    }
                }
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.get(i) {
                    if ch.is_whitespace() || matches!(ch, '{' | '}' | '=' | ',' | '"' | '#') {
                        break;
                    }
                    word.push(ch);
                    i += 1;
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

/// Parses a genimage configuration.
pub fn parse(text: &str) -> Result<Section, ParseError> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let root = parse_block(&tokens, &mut pos, None)?;
    Ok(root)
}

fn parse_block(tokens: &[(Token, usize)], pos: &mut usize, opened_at: Option<usize>) -> Result<Section, ParseError> {
    let mut section = Section { line: opened_at.unwrap_or(1), ..Section::default() };
    let last_line = tokens.last().map(|t| t.1).unwrap_or(1);
    loop {
        let Some((token, line)) = tokens.get(*pos) else {
            return match opened_at {
                Some(open) => Err(ParseError { line: open, message: "section is never closed (missing `}`)".into() }),
                None => Ok(section),
            };
        };
        let line = *line;
        match token {
            Token::Close => {
                *pos += 1;
                return match opened_at {
                    Some(_) => Ok(section),
                    None => Err(ParseError { line, message: "`}` without a section to close".into() }),
                };
            }
            Token::Word(word) => {
                let word = word.clone();
                *pos += 1;
                match tokens.get(*pos).map(|t| &t.0) {
                    Some(Token::Equals) => {
                        *pos += 1;
                        let value = parse_value(tokens, pos, line)?;
                        section.options.push((word, value));
                    }
                    Some(Token::Open) => {
                        *pos += 1;
                        let mut child = parse_block(tokens, pos, Some(line))?;
                        child.kind = word;
                        section.sections.push(child);
                    }
                    Some(Token::Word(title)) => {
                        let title = title.clone();
                        *pos += 1;
                        if tokens.get(*pos).map(|t| &t.0) != Some(&Token::Open) {
                            return Err(ParseError { line, message: format!("expected `{{` after `{word} {title}`") });
                        }
                        *pos += 1;
                        let mut child = parse_block(tokens, pos, Some(line))?;
                        child.kind = word;
                        child.title = Some(title);
                        section.sections.push(child);
                    }
                    _ => return Err(ParseError { line, message: format!("expected `=` or `{{` after `{word}`") }),
                }
            }
            other => {
                return Err(ParseError {
                    line: line.min(last_line),
                    message: format!("unexpected {}", describe(other)),
                })
            }
        }
    }
}

fn parse_value(tokens: &[(Token, usize)], pos: &mut usize, line: usize) -> Result<Value, ParseError> {
    match tokens.get(*pos) {
        Some((Token::Word(w), _)) => {
            *pos += 1;
            Ok(Value::Scalar(w.clone()))
        }
        Some((Token::Open, _)) => {
            *pos += 1;
            let mut items = Vec::new();
            loop {
                match tokens.get(*pos) {
                    Some((Token::Word(w), _)) => {
                        items.push(w.clone());
                        *pos += 1;
                    }
                    Some((Token::Close, _)) => {
                        *pos += 1;
                        return Ok(Value::List(items));
                    }
                    Some((Token::Comma, _)) => *pos += 1,
                    Some((other, l)) => {
                        return Err(ParseError {
                            line: *l,
                            message: format!("unexpected {} in a list", describe(other)),
                        })
                    }
                    None => return Err(ParseError { line, message: "list is never closed (missing `}`)".into() }),
                }
            }
        }
        Some((other, l)) => {
            Err(ParseError { line: *l, message: format!("expected a value, found {}", describe(other)) })
        }
        None => Err(ParseError { line, message: "expected a value at the end of the file".into() }),
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word(w) => format!("`{w}`"),
        Token::Open => "`{`".into(),
        Token::Close => "`}`".into(),
        Token::Equals => "`=`".into(),
        Token::Comma => "`,`".into(),
    }
}

/// A size as genimage reads it: bytes, or with a `k`/`K`, `M`, `G` (powers of 1024) or `s`
/// (512-byte sectors) suffix.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1u64 << 10),
        (i, 'M') => (&text[..i], 1 << 20),
        (i, 'G') => (&text[..i], 1 << 30),
        (i, 's') => (&text[..i], 512),
        _ => (text, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// GPT type of a BIOS boot partition (where GRUB's core.img lives on a GPT disk).
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6e6f-744e-656564454649";
/// GPT type of an EFI system partition; genimage also accepts the shortcut `U`.
pub const EFI_SYSTEM_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The EFI system partition's filesystem label, by which GRUB and the appliance find it.
pub const BOOT_LABEL: &str = "OASIS-BOOT";
/// Where the data partition starts (the appliance creates it at first boot): the image must end
/// before it.
pub const DATA_PARTITION_START: u64 = crate::appliance::DATA_FIRST * crate::gpt::SECTOR;
/// Top-level entries of the EFI system partition.
pub const ESP_TOP_LEVEL: [&str; 3] = ["EFI", "boot", "oasis"];

/// One way the appliance layout is not met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutProblem {
    /// 1-based line of the section concerned.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Checks that `config` describes the appliance disk `oasis image build appliance` writes: a GPT
/// disk image whose partition table holds exactly partition 1, BIOS boot, 1 MiB at 1 MiB, and
/// partition 2, the EFI system partition, a FAT32 image labelled `OASIS-BOOT` holding `EFI`,
/// `boot` and `oasis`, ending before the data partition (2 GiB); GRUB's boot code outside the table in the first 440
/// bytes. Returns every problem found.
pub fn check_appliance_layout(config: &Section) -> Vec<LayoutProblem> {
    let mut problems = Vec::new();
    let mut problem = |line: usize, message: String| problems.push(LayoutProblem { line, message });
    let disks: Vec<&Section> =
        config.sections_of("image").filter(|i| i.sections_of("hdimage").next().is_some()).collect();
    let [disk] = disks.as_slice() else {
        problem(1, format!("expected exactly one image with an `hdimage` section (the disk), found {}", disks.len()));
        return problems;
    };
    let hdimage = disk.sections_of("hdimage").next().expect("filtered on hdimage above");
    let gpt = hdimage.option("partition-table-type") == Some("gpt") || hdimage.option("gpt") == Some("true");
    if !gpt {
        problem(hdimage.line, "the disk's partition table must be GPT: set partition-table-type = \"gpt\"".into());
    }

    let in_table = |p: &Section| p.option("in-partition-table").is_none_or(|v| v != "false" && v != "no");
    let table: Vec<&Section> = disk.sections_of("partition").filter(|p| in_table(p)).collect();
    if table.len() != 2 {
        problem(
            disk.line,
            format!(
                "the partition table must hold exactly two partitions (BIOS boot, EFI system; the data partition is made at first boot), found {}",
                table.len()
            ),
        );
    }
    let type_of = |p: &Section| p.option("partition-type-uuid").unwrap_or("L").to_ascii_lowercase();
    let size_of = |p: &Section, key: &str| p.option(key).and_then(parse_size);

    if let Some(bios) = table.first() {
        let name = bios.title.as_deref().unwrap_or("?");
        if type_of(bios) != BIOS_BOOT_TYPE {
            problem(
                bios.line,
                format!("partition 1 ({name}) must be the BIOS boot partition: partition-type-uuid = {BIOS_BOOT_TYPE}"),
            );
        }
        if size_of(bios, "offset") != Some(1 << 20) || size_of(bios, "size") != Some(1 << 20) {
            problem(bios.line, format!("partition 1 ({name}) must be 1 MiB at 1 MiB: offset = 1M, size = 1M"));
        }
    }
    if let Some(esp) = table.get(1) {
        let name = esp.title.as_deref().unwrap_or("?");
        let kind = type_of(esp);
        if kind != "u" && kind != EFI_SYSTEM_TYPE {
            problem(
                esp.line,
                format!("partition 2 ({name}) must be the EFI system partition: partition-type-uuid = U"),
            );
        }
        match (size_of(esp, "offset"), size_of(esp, "size")) {
            (Some(offset), Some(size)) if offset + size <= DATA_PARTITION_START => {}
            _ => problem(
                esp.line,
                format!("partition 2 ({name}) needs an explicit offset and size ending by 2 GiB, where the data partition starts"),
            ),
        }
        match esp.option("image").and_then(|image| config.image(image).map(|s| (image, s))) {
            None => problem(
                esp.line,
                format!("partition 2 ({name}) must be filled from a vfat image defined in this file (image = \"...\")"),
            ),
            Some((image_name, image)) => {
                match image.sections_of("vfat").next() {
                    None => problem(image.line, format!("image {image_name} must be a vfat image (FAT32)")),
                    Some(vfat) => {
                        let args: Vec<&str> = vfat.option("extraargs").unwrap_or("").split_whitespace().collect();
                        if !args.windows(2).any(|w| w == ["-F", "32"]) {
                            problem(vfat.line, format!("image {image_name} must be FAT32: extraargs needs `-F 32`"));
                        }
                        if !args.windows(2).any(|w| w == ["-n", BOOT_LABEL]) {
                            problem(vfat.line, format!("image {image_name} must be labelled {BOOT_LABEL}: extraargs needs `-n {BOOT_LABEL}`"));
                        }
                        let files: Vec<&str> = vfat.sections_of("file").filter_map(|f| f.title.as_deref()).collect();
                        for wanted in ESP_TOP_LEVEL {
                            if !files.contains(&wanted) {
                                problem(vfat.line, format!("image {image_name} must hold `{wanted}` (add `file {wanted} {{ image = \"...\" }}`)"));
                            }
                        }
                    }
                }
            }
        }
    }

    let boot_code: Vec<&Section> =
        disk.sections_of("partition").filter(|p| !in_table(p) && size_of(p, "offset").unwrap_or(0) == 0).collect();
    match boot_code.as_slice() {
        [code] if size_of(code, "size").is_some_and(|s| s <= 440) => {}
        [code] => problem(
            code.line,
            "GRUB's boot code at offset 0 must be at most 440 bytes (size = 440): the rest of sector 0 is the GPT's protective MBR".into(),
        ),
        _ => problem(disk.line, "GRUB's boot code must be a partition outside the table at offset 0 (in-partition-table = false, offset = 0, size = 440)".into()),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        # comment
        image boot.vfat {
            vfat {
                extraargs = "-F 32 -n OASIS-BOOT"  // trailing comment
                file EFI { image = "esp/EFI" }
                file boot { image = "esp/boot" }
                file oasis { image = "esp/oasis" }
            }
            size = 1022M
        }
        /* a
           block comment */
        image disk.img {
            hdimage { partition-table-type = "gpt" }
            partition mbr { in-partition-table = false image = "mbr.img" offset = 0 size = 440 }
            partition bios-boot { partition-type-uuid = 21686148-6449-6E6F-744E-656564454649 image = "core.img" offset = 1M size = 1M }
            partition OASIS-BOOT { partition-type-uuid = U image = "boot.vfat" offset = 2M size = 1022M }
        }
        image x { file { holes = {"(440; 512)", "(1K; 2K)"} } }
    "#;

    #[test]
    fn parses_sections_options_lists_and_comments() {
        let cfg = parse(GOOD).unwrap();
        let disk = cfg.image("disk.img").unwrap();
        assert_eq!(disk.line, 14);
        let names: Vec<_> = disk.sections_of("partition").map(|p| p.title.clone().unwrap()).collect();
        assert_eq!(names, ["mbr", "bios-boot", "OASIS-BOOT"]);
        assert_eq!(
            cfg.image("boot.vfat").unwrap().sections_of("vfat").next().unwrap().option("extraargs"),
            Some("-F 32 -n OASIS-BOOT")
        );
        let holes = &cfg.image("x").unwrap().sections[0].options[0];
        assert_eq!(holes.1, Value::List(vec!["(440; 512)".into(), "(1K; 2K)".into()]));
    }

    #[test]
    fn syntax_errors_name_their_line() {
        assert_eq!(parse("image a {\n  size = 1M\n").unwrap_err().line, 1);
        assert_eq!(parse("image a {\n}\n}\n").unwrap_err().line, 3);
        assert!(parse("a {\n b = \"open\n}").unwrap_err().message.contains("never closed"));
        assert!(parse("a {\n b c d }").unwrap_err().message.contains("expected `{`"));
    }

    #[test]
    fn sizes_have_genimage_suffixes() {
        assert_eq!(parse_size("440"), Some(440));
        assert_eq!(parse_size("32K"), Some(32 * 1024));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2048s"), Some(1 << 20));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("1T"), None);
    }

    #[test]
    fn the_appliance_layout_is_accepted() {
        assert_eq!(check_appliance_layout(&parse(GOOD).unwrap()), []);
    }

    fn problems(edit: (&str, &str)) -> Vec<String> {
        assert!(GOOD.contains(edit.0), "{} is not in the sample", edit.0);
        let text = GOOD.replace(edit.0, edit.1);
        check_appliance_layout(&parse(&text).unwrap()).into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_departure_from_the_layout_is_named() {
        let cases = [
            (("\"gpt\"", "\"mbr\""), "must be GPT"),
            (("21686148-6449-6E6F-744E-656564454649", "L"), "must be the BIOS boot partition"),
            (("offset = 1M size = 1M", "offset = 1M size = 2M"), "1 MiB at 1 MiB"),
            (("partition-type-uuid = U", "partition-type-uuid = F"), "must be the EFI system partition"),
            (("offset = 2M size = 1022M", "offset = 2M size = 2047M"), "ending by 2 GiB"),
            (("-F 32 -n", "-n"), "must be FAT32"),
            (("-n OASIS-BOOT", "-n BOOT"), "labelled OASIS-BOOT"),
            (("file oasis {", "file other {"), "must hold `oasis`"),
            (("image = \"boot.vfat\"", "image = \"missing.vfat\""), "vfat image defined in this file"),
            (("offset = 0 size = 440", "offset = 0 size = 512"), "at most 440 bytes"),
            (
                ("partition mbr {", "partition data { partition-type-uuid = L size = 1G }\npartition mbr {"),
                "exactly two partitions",
            ),
        ];
        for ((from, to), wanted) in cases {
            let found = problems((from, to));
            assert!(
                found.iter().any(|p| p.contains(wanted)),
                "replacing {from:?} by {to:?}: wanted {wanted:?}, got {found:?}"
            );
        }
    }
}
