//! Update bundles: one signed file carrying a node generation (kernel, initramfs, etcd, and the k3s
//! bundle when the node image has one), which an appliance verifies completely, as it streams in,
//! before anything of it is used.
//!
//! The file, all integers big-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `OASISBDL` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | manifest length `M` (under [`MAX_MANIFEST_BYTES`]) |
//! | 8 | the signing key's id ([`crate::signing::key_id_bytes`]); zeros: unsigned |
//! | 64 | ed25519 signature of the exact `M` manifest bytes; zeros: unsigned |
//! | M | the manifest ([`BundleManifest`], JSON) |
//! | … | every member's bytes, in manifest order, nothing after the last |
//!
//! [`read_bundle`] checks the header, the manifest's length, the key (one of the trusted ones) and
//! the signature before it parses the manifest; then the product, the architecture and the total
//! size the manifest declares, then the caller's own rules (`oasis_core::update`), and only then
//! copies each member into a staging directory, hashing it on the way. It returns the manifest
//! only when every byte matched; on any error the staging directory is gone. [`write_bundle`]
//! makes a bundle from the directory `oasis image build node` writes, and with
//! [`BundleOptions::appliance`] adds the appliance's own slot ([`crate::bundle_appliance`]).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifacts::{self, ArtifactEntry, ArtifactsError};
use crate::bundle_appliance::{slot_image, ApplianceChanges, SlotImageError, SLOT_MEMBER};
use crate::k3s_bundle::{AIRGAP_ARTIFACT, K3S_ARTIFACT};
use crate::manifest::{sha256_file, write_atomic_with, ManifestError};
use crate::node::ETCD_FILE;
use crate::payload::{INITRD, KERNEL};
use crate::signing::{key_id, key_id_bytes, sign, verify, Signature, SigningKey, VerifyingKey};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"OASISBDL";
/// The format [`write_bundle`] writes and [`read_bundle`] reads.
pub const FORMAT_VERSION: u32 = 1;
/// What `product` says in a bundle for oasis.
pub const PRODUCT: &str = "oasis";
/// The one machine architecture oasis racks have.
pub const ARCHITECTURE: &str = "x86_64";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST_BYTES: u32 = 1 << 20;
/// The largest total of member sizes a reader accepts unless told otherwise.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 8 << 30;
/// Bytes before the manifest: magic, version, manifest length, key id, signature.
pub const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 64;

/// What a bundle is and holds; the signed part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`PRODUCT`].
    pub product: String,
    /// The product version this generation is (`--version`).
    pub version: String,
    /// Grows with every bundle; an appliance refuses one not above what it has installed.
    pub sequence: u64,
    /// The machine architecture the members run on ([`ARCHITECTURE`]).
    pub architecture: String,
    /// The versions this generation brings.
    pub changes: Changes,
    /// The members, in the order their bytes follow the manifest.
    pub members: Vec<Member>,
    /// The appliance's own update, when the bundle carries one (its [`Role::ApplianceSlot`]
    /// member). Absent from node-only bundles, which older appliances read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<ApplianceChanges>,
}

/// The versions of what a bundle installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// The node kernel (`uname -r`).
    pub kernel: String,
    /// The node agent.
    pub agent: String,
    /// etcd, as the Debian package version (`3.4.23-4+b4`).
    pub etcd: String,
    /// k3s, when the bundle carries it and its version was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<String>,
}

/// One file in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its plain file name in a node image directory.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
}

/// What a member is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Kernel,
    Initrd,
    Etcd,
    K3s,
    K3sAirgapImages,
    /// The appliance's boot slot, as its filesystem image.
    ApplianceSlot,
}

impl Role {
    /// The name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Kernel => "kernel",
            Role::Initrd => "initrd",
            Role::Etcd => "etcd",
            Role::K3s => K3S_ARTIFACT,
            Role::K3sAirgapImages => AIRGAP_ARTIFACT,
            Role::ApplianceSlot => "appliance-slot",
        }
    }

    /// Whether the member is a program (staged executable).
    fn executable(self) -> bool {
        matches!(self, Role::Etcd | Role::K3s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BundleManifest {
    /// The member with `role`, if there is one.
    pub fn member(&self, role: Role) -> Option<&Member> {
        self.members.iter().find(|m| m.role == role)
    }

    /// The sum of the member sizes; `None` if it overflows.
    pub fn total_size(&self) -> Option<u64> {
        self.members.iter().try_fold(0u64, |sum, m| sum.checked_add(m.size))
    }

    /// The `artifacts.json` entries of the members a node image lists there (etcd, k3s and its
    /// airgap images), so a staging directory becomes a node image directory.
    pub fn artifact_entries(&self) -> Vec<ArtifactEntry> {
        let version = |role| match role {
            Role::Etcd => Some(self.changes.etcd.clone()),
            Role::K3s => self.changes.k3s.clone(),
            _ => None,
        };
        self.members
            .iter()
            .filter(|m| matches!(m.role, Role::Etcd | Role::K3s | Role::K3sAirgapImages))
            .map(|m| ArtifactEntry {
                name: m.role.as_str().into(),
                file: m.name.clone(),
                sha256: m.sha256.clone(),
                size: m.size,
                version: version(m.role),
            })
            .collect()
    }

    /// One line saying what the bundle is.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} {} (sequence {}, {}): kernel {}, agent {}, etcd {}",
            self.product,
            self.version,
            self.sequence,
            self.architecture,
            self.changes.kernel,
            self.changes.agent,
            self.changes.etcd
        );
        if let Some(k3s) = &self.changes.k3s {
            line.push_str(&format!(", k3s {k3s}"));
        } else if self.member(Role::K3s).is_some() {
            line.push_str(", k3s (version not recorded)");
        }
        if let Some(appliance) = &self.appliance {
            line.push_str(&format!("; appliance {}", appliance.version));
        }
        line
    }
}

/// Why a bundle was refused. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle ends inside {at}: it was cut short (an interrupted copy or download); copy it again and compare its size with the original")]
    Truncated { at: String },
    #[error("this is not an oasis update bundle (its first bytes are not {magic:?}); give the file `oasis image build bundle` wrote", magic = "OASISBDL")]
    NotABundle,
    #[error("the bundle has format version {found}, this oasis reads version {supported}; use a bundle built by the same oasis release line, or update the appliance first")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error(
        "the bundle is not signed; build it with `oasis image build bundle --key KEY` using a key the appliance trusts"
    )]
    Unsigned,
    #[error("the bundle is signed by key {key_id}, which is not trusted here (trusted: {trusted}); sign it with a trusted key or add its public key")]
    UnknownKey { key_id: String, trusted: String },
    #[error("the bundle's signature by key {key_id} does not match its manifest: the file was damaged or altered; get an intact copy")]
    BadSignature { key_id: String },
    #[error("the bundle's manifest is not valid ({reason}); rebuild the bundle with `oasis image build bundle`")]
    Malformed { reason: String },
    #[error("the bundle is for product {found:?}, not {PRODUCT:?}; give an oasis update bundle")]
    WrongProduct { found: String },
    #[error("the bundle is for {found} machines, this rack's are {expected}; build the bundle for {expected}")]
    WrongArchitecture { found: String, expected: String },
    #[error("the bundle's {what} is {size} bytes, over the limit of {limit}; it is not a bundle this appliance takes")]
    TooLarge { what: &'static str, size: u64, limit: u64 },
    #[error("member {name} does not match the signed manifest (sha256 {actual}, manifest says {expected}): the file was damaged or altered; get an intact copy")]
    MemberMismatch { name: String, expected: String, actual: String },
    #[error("the bundle has bytes after its last member: it was altered or two files were joined; get an intact copy")]
    TrailingData,
    #[error("the bundle is authentic but cannot be installed here")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read the bundle")]
    Read(#[source] io::Error),
    #[error("cannot stage the bundle's members in {path}; free space there or give another staging directory")]
    Staging { path: PathBuf, source: io::Error },
}

impl BundleError {
    /// Whether the bundle itself (or what was asked of it) is at fault, not this host's I/O.
    pub fn is_input(&self) -> bool {
        !matches!(self, BundleError::Read(_) | BundleError::Staging { .. })
    }
}

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleWriteError {
    #[error("the node image directory is not usable for a bundle")]
    NodeImage(#[from] ArtifactsError),
    #[error(transparent)]
    Io(#[from] ManifestError),
    #[error("{path} is missing from the node image; give the directory `oasis image build node` wrote")]
    Missing { path: PathBuf },
    #[error("cannot tell the kernel version of {path} (not a bzImage with a version string); give --kernel-version")]
    KernelVersion { path: PathBuf },
    #[error("{path} records no etcd version; rebuild the node image with `oasis image build node`")]
    EtcdVersion { path: PathBuf },
    #[error("the manifest is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}")]
    ManifestTooLarge { size: usize },
    #[error("the appliance image cannot be bundled")]
    Appliance(#[from] SlotImageError),
}

/// What [`write_bundle`] is told beyond the node image.
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    /// The product version (`--version`).
    pub version: String,
    /// The anti-rollback sequence number (`--sequence`).
    pub sequence: u64,
    /// The kernel version; read from the kernel's bzImage header when not given.
    pub kernel_version: Option<String>,
    /// The agent version; the product version when not given.
    pub agent_version: Option<String>,
    /// The k3s version, when the node image carries k3s.
    pub k3s_version: Option<String>,
    /// An appliance disk image (`oasis image build appliance`) whose slot the bundle carries, so
    /// the appliance updates itself too; its version is the bundle's.
    pub appliance: Option<PathBuf>,
}

/// Who signed a verified bundle, and what it holds.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub manifest: BundleManifest,
    /// The id of the trusted key that signed it.
    pub key_id: String,
}

/// What [`read_bundle`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// The keys a bundle may be signed with.
    pub trusted: &'a [VerifyingKey],
    /// The architecture the rack's machines have.
    pub architecture: &'a str,
    /// The largest total of member sizes accepted.
    pub max_total_bytes: u64,
}

/// Where [`read_bundle`] puts the members it verified.
#[derive(Debug, Clone, Copy)]
pub enum Sink<'a> {
    /// Into this directory, which must not exist yet (its parent must), one file per member.
    /// Removed with everything in it on any error.
    Staging(&'a Path),
    /// Nowhere: only verify.
    Discard,
}

/// The rules a caller adds once the manifest is authentic, before any member is copied.
pub type Accept<'a> = &'a dyn Fn(&BundleManifest) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Makes a bundle of the node image in `node_dir` (`oasis image build node`'s output), signed with
/// `key`, at `out` (written aside and renamed: `out` is the old file or the whole new one).
pub fn write_bundle(
    node_dir: &Path,
    options: &BundleOptions,
    key: &SigningKey,
    out: &Path,
) -> Result<BundleManifest, BundleWriteError> {
    let (manifest, slot) = manifest_of(node_dir, options)?;
    let head = encode_head(&manifest, Some(key))?;
    write_atomic_with(out, |file| {
        let mut buffered = io::BufWriter::new(file);
        buffered.write_all(&head)?;
        for member in &manifest.members {
            match (&slot, member.role) {
                (Some(slot), Role::ApplianceSlot) => copy_member(&slot.path, Some(slot.offset), member, &mut buffered)?,
                _ => copy_member(&node_dir.join(&member.name), None, member, &mut buffered)?,
            }
        }
        buffered.flush()
    })?;
    Ok(manifest)
}

/// The header and manifest of a bundle holding `manifest`, signed with `key` (without: unsigned,
/// which readers refuse). The members' bytes follow them.
pub fn encode_head(manifest: &BundleManifest, key: Option<&SigningKey>) -> Result<Vec<u8>, BundleWriteError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a bundle manifest serializes");
    if json.len() >= MAX_MANIFEST_BYTES as usize {
        return Err(BundleWriteError::ManifestTooLarge { size: json.len() });
    }
    let mut head = Vec::with_capacity(HEADER_BYTES + json.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    head.extend_from_slice(&(json.len() as u32).to_be_bytes());
    match key {
        Some(key) => {
            head.extend_from_slice(&key_id_bytes(&key.verifying_key()));
            head.extend_from_slice(&sign(key, &json).to_bytes());
        }
        None => head.extend_from_slice(&[0u8; 8 + 64]),
    }
    head.extend_from_slice(&json);
    Ok(head)
}

/// The manifest of the node image in `dir`, its files checked against `artifacts.json`, and of the
/// appliance's slot when one is given (with where its bytes lie).
fn manifest_of(
    dir: &Path,
    options: &BundleOptions,
) -> Result<(BundleManifest, Option<crate::bundle_appliance::SlotImage>), BundleWriteError> {
    let entries = artifacts::verify(dir)?;
    let mut members = Vec::new();
    for (file, role) in [(KERNEL, Role::Kernel), (INITRD, Role::Initrd)] {
        let path = dir.join(file);
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BundleWriteError::Missing { path }),
            Err(source) => return Err(ManifestError::Io { path, source }.into()),
        };
        members.push(Member { name: file.into(), role, size, sha256: sha256_file(&path)? });
    }
    let etcd =
        artifacts::find(&entries, ETCD_FILE).ok_or_else(|| BundleWriteError::Missing { path: dir.join(ETCD_FILE) })?;
    let etcd_version = etcd
        .version
        .clone()
        .ok_or_else(|| BundleWriteError::EtcdVersion { path: dir.join(artifacts::ARTIFACTS_FILE) })?;
    for (name, role) in [(ETCD_FILE, Role::Etcd), (K3S_ARTIFACT, Role::K3s), (AIRGAP_ARTIFACT, Role::K3sAirgapImages)] {
        if let Some(entry) = artifacts::find(&entries, name) {
            members.push(Member { name: entry.file.clone(), role, size: entry.size, sha256: entry.sha256.clone() });
        }
    }
    let kernel_version = match &options.kernel_version {
        Some(version) => version.clone(),
        None => {
            let path = dir.join(KERNEL);
            bzimage_version(&path)?.ok_or(BundleWriteError::KernelVersion { path })?
        }
    };
    let has_k3s = members.iter().any(|m| m.role == Role::K3s);
    let slot = options.appliance.as_deref().map(slot_image).transpose()?;
    let appliance = slot.as_ref().map(|slot| {
        let (name, size, sha256) = (SLOT_MEMBER.to_string(), slot.size, slot.sha256.clone());
        members.push(Member { name, role: Role::ApplianceSlot, size, sha256 });
        // The slot's own version (what the appliance will say it runs); the bundle's otherwise.
        let version = slot.version.clone().unwrap_or_else(|| options.version.clone());
        ApplianceChanges { version, slot_bytes: slot.slot_bytes }
    });
    let manifest = BundleManifest {
        product: PRODUCT.into(),
        version: options.version.clone(),
        sequence: options.sequence,
        architecture: ARCHITECTURE.into(),
        changes: Changes {
            kernel: kernel_version,
            agent: options.agent_version.clone().unwrap_or_else(|| options.version.clone()),
            etcd: etcd_version,
            k3s: options.k3s_version.clone().filter(|_| has_k3s),
        },
        members,
        appliance,
    };
    Ok((manifest, slot))
}

/// Copies `member` from `path` into `out`, checking on the way that it is still what `member`
/// says: the whole file, or with `offset` the region of a disk image it starts at (a slot).
fn copy_member(path: &Path, offset: Option<u64>, member: &Member, out: &mut impl Write) -> io::Result<()> {
    let mut file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(offset.unwrap_or(0)))?;
    let mut hashing = HashingWriter { inner: out, hasher: Sha256::new(), written: 0 };
    io::copy(&mut (&mut file).take(member.size), &mut hashing)?;
    // A whole file must end where the manifest says; a region goes on in its image.
    let grown = offset.is_none() && file.read(&mut [0u8; 1])? != 0;
    let sha256 = hex::encode(hashing.hasher.finalize());
    if grown || hashing.written != member.size || sha256 != member.sha256 {
        return Err(io::Error::other(format!(
            "{} changed while it was bundled; rebuild the image and the bundle",
            path.display()
        )));
    }
    Ok(())
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The kernel version a bzImage carries (its setup header's `kernel_version` string, first word);
/// `None` when the file is not a bzImage with one.
pub fn bzimage_version(path: &Path) -> Result<Option<String>, ManifestError> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|source| ManifestError::Io { path: path.into(), source })?;
    Ok(bzimage_version_of(&head))
}

fn bzimage_version_of(head: &[u8]) -> Option<String> {
    let u16_at = |at: usize| head.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if head.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x200 {
        return None;
    }
    let offset = usize::from(u16_at(0x20e)?);
    if offset == 0 {
        return None;
    }
    let text = head.get(offset + 0x200..)?;
    let end = text.iter().position(|&b| b == 0)?;
    let version = std::str::from_utf8(&text[..end]).ok()?.split_whitespace().next()?;
    Some(version.to_string())
}

/// Reads a bundle from `reader` and verifies it (see the module documentation for the order):
/// the verified manifest once every member matched and sits in `sink`. `accept` is asked after
/// the manifest is authentic and before any member is copied.
pub fn read_bundle(
    reader: impl Read,
    options: &VerifyOptions<'_>,
    accept: Accept<'_>,
    sink: Sink<'_>,
) -> Result<VerifiedBundle, BundleError> {
    let staging = match sink {
        Sink::Staging(dir) => {
            fs::create_dir(dir).map_err(|source| BundleError::Staging { path: dir.into(), source })?;
            Some(dir)
        }
        Sink::Discard => None,
    };
    let result = read_into(reader, options, accept, staging);
    if let (Err(_), Some(dir)) = (&result, staging) {
        let _ = fs::remove_dir_all(dir);
    }
    result
}

fn read_into(
    mut reader: impl Read,
    options: &VerifyOptions<'_>,
    accept: Accept<'_>,
    staging: Option<&Path>,
) -> Result<VerifiedBundle, BundleError> {
    let (manifest, key_id) = read_head(&mut reader, options)?;
    accept(&manifest).map_err(BundleError::Refused)?;
    for member in &manifest.members {
        read_member(&mut reader, member, staging)?;
    }
    if read_full(&mut reader, &mut [0u8; 1])? != 0 {
        return Err(BundleError::TrailingData);
    }
    if let Some(dir) = staging {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| BundleError::Staging { path: dir.into(), source })?;
    }
    Ok(VerifiedBundle { manifest, key_id })
}

/// Reads and checks everything before the members: the authentic, sane manifest and its key's id.
fn read_head(reader: &mut impl Read, options: &VerifyOptions<'_>) -> Result<(BundleManifest, String), BundleError> {
    let mut head = [0u8; HEADER_BYTES];
    let got = read_full(reader, &mut head)?;
    if head[..got.min(8)] != MAGIC[..got.min(8)] {
        return Err(BundleError::NotABundle);
    }
    if got < HEADER_BYTES {
        return Err(BundleError::Truncated { at: "the header".into() });
    }
    let version = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let length = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
    if length >= MAX_MANIFEST_BYTES {
        return Err(BundleError::TooLarge { what: "manifest", size: length.into(), limit: MAX_MANIFEST_BYTES.into() });
    }
    let (id, signature) = (&head[16..24], &head[24..HEADER_BYTES]);
    if id.iter().chain(signature).all(|&b| b == 0) {
        return Err(BundleError::Unsigned);
    }
    let key = options.trusted.iter().find(|k| key_id_bytes(k) == id).ok_or_else(|| BundleError::UnknownKey {
        key_id: hex::encode(id),
        trusted: match options.trusted {
            [] => "none".into(),
            keys => keys.iter().map(key_id).collect::<Vec<_>>().join(", "),
        },
    })?;
    let mut json = vec![0u8; length as usize];
    if read_full(reader, &mut json)? < json.len() {
        return Err(BundleError::Truncated { at: "the manifest".into() });
    }
    let signature = Signature::from_bytes(signature.try_into().expect("64 bytes"));
    if !verify(key, &json, &signature) {
        return Err(BundleError::BadSignature { key_id: key_id(key) });
    }
    let manifest: BundleManifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Malformed { reason: e.to_string() })?;
    check_manifest(&manifest, options)?;
    Ok((manifest, key_id(key)))
}

/// The checks of an authentic manifest: product, architecture, members and their total size.
fn check_manifest(manifest: &BundleManifest, options: &VerifyOptions<'_>) -> Result<(), BundleError> {
    if manifest.product != PRODUCT {
        return Err(BundleError::WrongProduct { found: manifest.product.clone() });
    }
    if manifest.architecture != options.architecture {
        return Err(BundleError::WrongArchitecture {
            found: manifest.architecture.clone(),
            expected: options.architecture.into(),
        });
    }
    let malformed = |reason: String| Err(BundleError::Malformed { reason });
    for (i, member) in manifest.members.iter().enumerate() {
        let name = &member.name;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return malformed(format!("member name {name:?} is not a plain file name"));
        }
        if member.sha256.len() != 64 || !member.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return malformed(format!("member {name} has sha256 {:?}, not 64 lowercase hex digits", member.sha256));
        }
        if manifest.members[..i].iter().any(|m| m.name == *name || m.role == member.role) {
            return malformed(format!("member {name} ({}) repeats a name or role", member.role));
        }
    }
    for role in [Role::Kernel, Role::Initrd, Role::Etcd] {
        if manifest.member(role).is_none() {
            return malformed(format!("it has no {role} member"));
        }
    }
    if manifest.member(Role::K3s).is_some() != manifest.member(Role::K3sAirgapImages).is_some() {
        return malformed("k3s and its airgap images come together or not at all".into());
    }
    if manifest.member(Role::ApplianceSlot).is_some() != manifest.appliance.is_some() {
        return malformed(
            "an appliance slot member and the appliance's description come together or not at all".into(),
        );
    }
    match manifest.total_size() {
        Some(total) if total <= options.max_total_bytes => Ok(()),
        total => Err(BundleError::TooLarge {
            what: "declared member size",
            size: total.unwrap_or(u64::MAX),
            limit: options.max_total_bytes,
        }),
    }
}

/// Copies one member from `reader` into `staging` (if any), checking its hash.
fn read_member(reader: &mut impl Read, member: &Member, staging: Option<&Path>) -> Result<(), BundleError> {
    let mut file = match staging {
        Some(dir) => {
            let path = dir.join(&member.name);
            let staged = |source| BundleError::Staging { path: path.clone(), source };
            let file = File::options().write(true).create_new(true).open(&path).map_err(staged)?;
            let mode = if member.role.executable() { 0o755 } else { 0o644 };
            file.set_permissions(fs::Permissions::from_mode(mode)).map_err(staged)?;
            Some((file, path))
        }
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = member.size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(BundleError::Truncated { at: format!("member {}", member.name) }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Read(e)),
        };
        hasher.update(&buf[..n]);
        if let Some((file, path)) = &mut file {
            file.write_all(&buf[..n]).map_err(|source| BundleError::Staging { path: path.clone(), source })?;
        }
        left -= n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != member.sha256 {
        return Err(BundleError::MemberMismatch { name: member.name.clone(), expected: member.sha256.clone(), actual });
    }
    if let Some((file, path)) = file {
        file.sync_all().map_err(|source| BundleError::Staging { path, source })?;
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; how many bytes it holds.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, BundleError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::Read(e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
